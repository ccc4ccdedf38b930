"""What a classifier must be before dlkit packages it or reports its accuracy.

A file can load and run and still be no classifier Triton can serve, or whose accuracy means
anything: an ONNX graph with operators from a custom domain (Triton's ONNX Runtime has none),
a weight whose data is missing, an input other than the one its metadata declares; answers
that are NaN, integers, or two tensors. The runners hide some of that (they take the first
output and cast it to float32), so `check_classifier` runs the file itself, once, on real
images, as its runtime will, and refuses such a file with one message. `check_scores` is the
check on answers, for every runner's logits too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.artifacts.registry import detect_format
from toolkit.choices import Format
from toolkit.errors import DlkitError

# Domains whose operators ONNX Runtime (and so Triton's onnxruntime backend) implements.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
CHECK_IMAGES = 8
CHECK_BYTES = 2**30  # the most input the check allocates (8 images of 3x4096x4096 are 1.5 GiB)


def check_classifier(
    path: str | os.PathLike,
    info: ArtifactInfo,
    batch: np.ndarray | None = None,
    trust: bool = False,
) -> None:
    """Refuse `path` unless it is a classifier: for ONNX, standard operators, every weight's
    data in the file and the input its metadata declares; run on `batch` (default: images
    of its own validation data, else random pictures) it answers one float32 array of a
    finite score per class. Checkpoints (dlkit's own model code) and served models pass here;
    their answers meet `check_scores`. Raises DlkitError naming the problem."""
    fmt = detect_format(path)
    if fmt not in (Format.ONNX, Format.TORCHSCRIPT):
        return
    check_count(info, path)
    if batch is None:
        batch = sample_batch(info)
    if fmt == Format.ONNX:
        check_onnx_graph(path, info)
        outputs = _run(path, batch, _onnx_outputs, str(path), batch)
    else:
        outputs = _run(path, batch, _torchscript_outputs, str(path), batch, trust)
    check_scores(outputs, info, len(batch), str(path))


def check_scores(outputs: Sequence[Any], info: ArtifactInfo, rows: int, who: str) -> None:
    """Refuse answers to a batch of `rows` images that are not one float32 array of shape
    (rows, classes) holding finite numbers."""
    if len(outputs) != 1:
        raise DlkitError(
            f"{who} answers {len(outputs)} tensors; a classifier answers one, a score per class"
        )
    out = outputs[0]
    if not isinstance(out, np.ndarray):
        raise DlkitError(f"{who} answers a {type(out).__name__}, not a tensor of scores")
    if out.dtype != np.float32:
        raise DlkitError(
            f"{who} answers {out.dtype} values; a classifier answers float32 scores (dlkit's "
            "configs, runners and Triton's python backend all read them as such)"
        )
    if out.shape != (rows, info.num_classes):
        raise DlkitError(
            f"{who} answers shape {tuple(out.shape)} for {rows} images; its metadata lists "
            f"{info.num_classes} classes, so ({rows}, {info.num_classes}) was expected"
        )
    bad = int((~np.isfinite(out).all(axis=1)).sum())
    if bad:
        raise DlkitError(
            f"{who} answers NaN or infinite scores for {bad} of {rows} images; no accuracy "
            "means anything for such a model (check its weights and export)"
        )


def check_count(info: ArtifactInfo, who: str | os.PathLike = "the model") -> int:
    """How many images the check runs: `CHECK_IMAGES` (fewer where they are huge), or the
    model's fixed batch, which must fit in `CHECK_BYTES`: a batch nothing can allocate is
    refused, not attempted."""
    image = 4 * math.prod(info.preprocessing.input_shape)  # float32 bytes
    if info.static_batch is None:
        return max(1, min(CHECK_IMAGES, CHECK_BYTES // image))
    if not 1 <= info.static_batch <= CHECK_BYTES // image:
        shape = "x".join(map(str, info.preprocessing.input_shape))
        raise DlkitError(
            f"{who}: its metadata gives a fixed batch of {info.static_batch} images of {shape}; "
            f"at most {CHECK_BYTES // image} fit in 1 GiB. Export it again with `dlkit export`"
        )
    return info.static_batch


def sample_batch(info: ArtifactInfo) -> np.ndarray:
    """Real inputs: the first images of the model's validation data, or, when that is not on
    this machine, seeded random pictures through its preprocessing."""
    from toolkit.data import load_split

    try:
        dataset, _ = load_split(info.source, info.preprocessing, "val")
        if len(dataset):
            return first_images(dataset, info)
    except DlkitError:
        pass
    pre = info.preprocessing
    pixels = np.random.default_rng(0).random((check_count(info), *pre.input_shape))
    mean, std = (np.asarray(v).reshape(-1, 1, 1) for v in (pre.mean, pre.std))
    return ((pixels - mean) / std).astype(np.float32)


def first_images(dataset, info: ArtifactInfo, who: str | os.PathLike = "the model") -> np.ndarray:
    """A batch of a dataset's first images (`check_count` of them, repeated when there are
    fewer) for the model `who`."""
    count = check_count(info, who)
    images = [dataset[i][0].numpy() for i in range(min(count, len(dataset)))]
    return np.stack([images[i % len(images)] for i in range(count)]).astype(np.float32)


def check_onnx_graph(path: str | os.PathLike, info: ArtifactInfo) -> None:
    """What an ONNX file declares: standard operators only (or its own functions), data for
    every weight, one input as its metadata says, one float32 output."""
    from onnx import TensorProto

    from toolkit.artifacts.onnx import load_model_proto

    model = load_model_proto(path)
    own = {(f.domain, f.name) for f in model.functions}
    nodes = [*_nodes(model.graph.node), *(n for f in model.functions for n in _nodes(f.node))]
    custom = sorted(
        {
            f"{n.op_type} (domain {n.domain!r})"
            for n in nodes
            if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in own
        }
    )
    if custom:
        raise DlkitError(
            f"{path} uses operators from a custom domain ({', '.join(custom[:3])}), which "
            "Triton's ONNX Runtime does not have; export it with standard operators"
        )
    empty = [t.name for t in model.graph.initializer if _missing_data(t)]
    if empty:
        raise DlkitError(
            f"{path}: the weight {empty[0]!r} has no data ({len(empty)} such); the file is "
            "damaged or was cut short. Export it again"
        )
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise DlkitError(
            f"{path} has {len(inputs)} inputs and {len(model.graph.output)} outputs; a "
            "classifier has one of each (export it with `dlkit export`)"
        )
    _check_input(path, inputs[0], info)
    elem = model.graph.output[0].type.tensor_type.elem_type
    if elem != TensorProto.FLOAT:
        name = TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else elem
        raise DlkitError(f"{path} answers {name} values; a classifier answers float32 scores")


def _check_input(path, value, info: ArtifactInfo) -> None:
    dims = [
        d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
    ]
    expected = info.preprocessing.input_shape
    batch = "N" if info.static_batch is None else str(info.static_batch)
    fits = len(dims) == 4 and tuple(dims[1:]) == expected
    if fits and dims[0] is not None:
        fits = dims[0] == info.static_batch
    if not fits:
        shown = ", ".join("?" if d is None else str(d) for d in dims)
        raise DlkitError(
            f"{path} declares its input as ({shown}), but its metadata says ({batch}, "
            f"{', '.join(map(str, expected))}); export it again with `dlkit export`"
        )


def _nodes(nodes) -> list:
    """Every node, those of subgraphs (If, Loop, Scan bodies) included."""
    found = []
    for node in nodes:
        found.append(node)
        for attribute in node.attribute:
            for graph in [attribute.g, *attribute.graphs]:
                found += _nodes(graph.node)
    return found


def _missing_data(tensor) -> bool:
    if tensor.data_location == tensor.EXTERNAL:
        return False  # in another file: `package` refuses those, ONNX Runtime reads them
    count = math.prod(tensor.dims)
    fields = ("raw_data", "float_data", "int32_data", "int64_data", "double_data")
    stored = (*fields, "uint64_data", "string_data")
    return count > 0 and not any(len(getattr(tensor, f)) for f in stored)


def _run(path, batch: np.ndarray, fn, *args) -> list[Any]:
    """`fn(*args)` in a child process under the model timeout (`toolkit.artifacts.isolated`):
    the file is from outside, and loading or running it may never end."""
    from toolkit.artifacts.isolated import run_isolated

    return run_isolated(fn, *args, what=str(path), doing=f"answering {len(batch)} images")


def _onnx_outputs(path, batch: np.ndarray) -> list[Any]:
    import onnxruntime as ort

    from toolkit.artifacts.runner import first_line

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
        return session.run(None, {feed.name: batch.astype(dtype)})
    except Exception as exc:
        raise DlkitError(f"ONNX Runtime cannot run {path}: {first_line(exc)}") from None


def _torchscript_outputs(path, batch: np.ndarray, trust: bool) -> list[Any]:
    import torch

    from toolkit.artifacts.runner import first_line
    from toolkit.artifacts.torchscript import load_torchscript

    module, info = load_torchscript(path, trust=trust)
    dtype = getattr(torch, info.input_dtype, torch.float32)
    try:
        with torch.inference_mode():
            out = module(torch.from_numpy(batch).to(dtype))
    except Exception as exc:
        raise DlkitError(f"{path} fails on {len(batch)} images: {first_line(exc)}") from None
    several = isinstance(out, (tuple, list)) and len(out) != 1
    answers = list(out) if several else [out]  # a list of one is not a tensor either
    if len(answers) == 1 and getattr(answers[0], "dtype", None) == torch.bfloat16:
        raise DlkitError(f"{path} answers bfloat16 values; a classifier answers float32 scores")
    for answer in answers:  # said here: what is not a tensor may not cross to the parent
        if not isinstance(answer, torch.Tensor):
            raise DlkitError(f"{path} answers a {type(answer).__name__}, not a tensor of scores")
    return [a.numpy() for a in answers]
