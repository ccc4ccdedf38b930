"""A Triton model repository from dlkit artifacts.

Every `config.pbtxt` is built with Triton's own protobuf (`model_config_pb2`) and parsed back
before it is written; names, dims and dtypes come from the artifact itself. A new version is
written into a temporary folder and renamed into place, so a running server never sees half a
version, and existing versions are never touched.

Layout for an artifact packaged as NAME (with `--preprocess`):

    NAME/config.pbtxt, NAME/labels.txt, NAME/<version>/model.onnx|model.pt[, model.py]
    NAME_preprocess/   python backend: encoded image bytes -> the artifact's input tensor
    NAME_ensemble/     NAME_preprocess then NAME: image files in, logits (and top-k labels) out
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifact import ArtifactInfo, read_artifact_info, sniff_format
from toolkit.errors import DlkitError
from toolkit.files import atomic_path

BACKENDS = ("native", "python")
KINDS = {
    "auto": mc.ModelInstanceGroup.KIND_AUTO,
    "cpu": mc.ModelInstanceGroup.KIND_CPU,
    "gpu": mc.ModelInstanceGroup.KIND_GPU,
}
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_QUEUE_DELAY_US = 2000
CONFIG_FILE, LABELS_FILE = "config.pbtxt", "labels.txt"
INFO_PARAMETER = "dlkit"  # config parameter holding the artifact's ArtifactInfo JSON
IMAGE_INPUT = "IMAGE"  # the preprocessing ensemble's input: encoded image bytes
BACKEND_SOURCES = Path(__file__).parent / "backend"

_ONNX_DTYPES = {
    1: "TYPE_FP32",
    10: "TYPE_FP16",
    16: "TYPE_BF16",
    11: "TYPE_FP64",
    3: "TYPE_INT8",
    2: "TYPE_UINT8",
    7: "TYPE_INT64",
}
_INFO_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}


@dataclass(frozen=True)
class PackageOptions:
    """How `package_artifact` serves an artifact. `max_batch_size=None` means the default for
    a dynamic batch dimension (and 0 for an artifact exported with a fixed batch)."""

    backend: str = "native"
    max_batch_size: int | None = None
    dynamic_batching: bool = True
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    kind: str = "auto"
    threads: int = 0
    preprocess: bool = False


@dataclass
class PackageResult:
    """What `package_artifact` wrote: the models (classifier first) and the new version."""

    artifact: str
    model: str
    version: int
    backend: str
    platform: str
    max_batch_size: int
    models: list[str]
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # a Triton TYPE_* name
    dims: tuple[int, ...]  # without the batch dimension when the model batches


# ------------------------------------------------------------------------------------ configs


def write_config(config: mc.ModelConfig, path: str | os.PathLike) -> None:
    """Serialise through text_format, parse the text back as a check, write atomically."""
    text = text_format.MessageToString(config)
    if text_format.Parse(text, mc.ModelConfig()) != config:
        raise DlkitError(f"config for {config.name} does not survive a round trip; please report")
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_config(path: str | os.PathLike) -> mc.ModelConfig:
    """Parse a config.pbtxt; a malformed one names itself."""
    try:
        return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise DlkitError(f"cannot read Triton config {path}: {exc}") from exc


def config_info(config: mc.ModelConfig) -> ArtifactInfo | None:
    """The ArtifactInfo a dlkit-written config carries, or None for other models."""
    param = config.parameters.get(INFO_PARAMETER)
    return ArtifactInfo.from_dict(json.loads(param.string_value)) if param else None


def _io_tensors(path: Path, fmt: str, info: ArtifactInfo, backend: str) -> tuple[Tensor, Tensor]:
    """Input and output as the model file declares them. ONNX graphs are read; TorchScript has
    no named signature, so its shapes come from the metadata and its names follow the native
    PyTorch backend's `INPUT__0`/`OUTPUT__0` convention."""
    if fmt == "torchscript":
        dtype = _INFO_DTYPES.get(info.input_dtype, "TYPE_FP32")
        shape = info.preprocessing.input_shape
        if info.static_batch:
            dims_in, dims_out = (info.static_batch, *shape), (info.static_batch, info.num_classes)
        else:
            dims_in, dims_out = shape, (info.num_classes,)
        names = ("INPUT__0", "OUTPUT__0") if backend == "native" else ("input", "logits")
        return Tensor(names[0], dtype, dims_in), Tensor(names[1], "TYPE_FP32", dims_out)
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise DlkitError(
            f"{path}: expected one input and one output, found {len(inputs)} and "
            f"{len(graph.output)}; export it with `dlkit export`"
        )

    def tensor(value) -> Tensor:
        t = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(t.elem_type)
        if dtype is None:
            raise DlkitError(
                f"{path}: tensor {value.name} has an ONNX type Triton dlkit "
                f"does not map ({t.elem_type})"
            )
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return Tensor(value.name, dtype, dims)

    tin, tout = tensor(inputs[0]), tensor(graph.output[0])
    if tin.dims[0] == -1:  # a dynamic batch dimension: Triton owns it
        tin, tout = (
            Tensor(tin.name, tin.dtype, tin.dims[1:]),
            Tensor(tout.name, tout.dtype, tout.dims[1:]),
        )
    if any(d < 1 for d in tin.dims + tout.dims):
        raise DlkitError(f"{path}: only the batch dimension may be dynamic; got {tin.dims}")
    return tin, tout


def _parameters(config: mc.ModelConfig, values: dict[str, Any]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def classifier_config(
    name: str,
    fmt: str,
    info: ArtifactInfo,
    tensors: tuple[Tensor, Tensor],
    options: PackageOptions,
    max_batch_size: int,
) -> mc.ModelConfig:
    """The classifier's config: native ONNX Runtime / LibTorch, or the python backend."""
    tin, tout = tensors
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    if options.backend == "python":
        config.backend = "python"
        artifact_file = "model.onnx" if fmt == "onnx" else "model.pt"
        _parameters(
            config,
            {
                "artifact_format": fmt,
                "artifact_file": artifact_file,
                "intra_op_thread_count": options.threads,
                "inter_op_thread_count": 1,
            },
        )
    elif fmt == "onnx":
        config.platform = "onnxruntime_onnx"
        # ONNX Runtime backend parameters; 0 lets ONNX Runtime use every core.
        _parameters(config, {"intra_op_thread_count": options.threads, "inter_op_thread_count": 1})
    else:
        config.platform = "pytorch_libtorch"
        _parameters(
            config,
            {
                "INFERENCE_MODE": "true",
                "INTRA_OP_THREAD_COUNT": options.threads,
                "INTER_OP_THREAD_COUNT": 1,
            },
        )
    config.input.add(name=tin.name, data_type=mc.DataType.Value(tin.dtype), dims=tin.dims)
    config.output.add(
        name=tout.name,
        data_type=mc.DataType.Value(tout.dtype),
        dims=tout.dims,
        label_filename=LABELS_FILE,
    )
    config.instance_group.add(count=options.instances, kind=KINDS[options.kind])
    if max_batch_size > 0 and options.dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    warmup.inputs[tin.name].data_type = mc.DataType.Value(tin.dtype)
    warmup.inputs[tin.name].dims.extend(tin.dims)
    warmup.inputs[tin.name].zero_data = True
    _parameters(config, {INFO_PARAMETER: json.dumps(info.to_dict())})
    return config


def preprocess_config(
    name: str, info: ArtifactInfo, target: Tensor, options: PackageOptions, max_batch_size: int
) -> mc.ModelConfig:
    """Python backend: encoded image bytes -> float tensor shaped like the classifier input."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    config.input.add(name="image", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="input", data_type=mc.DataType.Value(target.dtype), dims=target.dims)
    config.instance_group.add(count=options.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    _parameters(config, {INFO_PARAMETER: json.dumps(info.to_dict())})
    return config


def ensemble_config(
    name: str,
    classifier: mc.ModelConfig,
    preprocess: mc.ModelConfig,
    info: ArtifactInfo,
) -> mc.ModelConfig:
    """Image bytes in, the classifier's logits out (with labels for Triton's top-k)."""
    cin, cout = classifier.input[0], classifier.output[0]
    config = mc.ModelConfig(
        name=name, platform="ensemble", max_batch_size=classifier.max_batch_size
    )
    config.input.add(name=IMAGE_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(
        name=cout.name, data_type=cout.data_type, dims=cout.dims, label_filename=LABELS_FILE
    )
    pre = config.ensemble_scheduling.step.add(model_name=preprocess.name, model_version=-1)
    pre.input_map["image"] = IMAGE_INPUT
    pre.output_map["input"] = "preprocessed"
    step = config.ensemble_scheduling.step.add(model_name=classifier.name, model_version=-1)
    step.input_map[cin.name] = "preprocessed"
    step.output_map[cout.name] = cout.name
    _parameters(config, {INFO_PARAMETER: json.dumps(info.to_dict())})
    return config


# --------------------------------------------------------------------------------- repository


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_name(artifact: str | os.PathLike) -> str:
    """`runs/digits/best.onnx` -> `best`; `best.torchscript.pt` -> `best`."""
    name = Path(artifact).name.removesuffix(".torchscript.pt").removesuffix(".onnx")
    name = name.removesuffix(".pt")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "model"


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _check_compatible(model_dir: Path, new: mc.ModelConfig, info: ArtifactInfo) -> None:
    """A new version must fit the model's existing config: one config serves all versions."""
    old = read_config(model_dir / CONFIG_FILE)
    old_info = config_info(old)

    def signature(c: mc.ModelConfig) -> tuple:
        return (
            c.platform,
            c.backend,
            c.max_batch_size,
            [text_format.MessageToString(t) for t in (*c.input, *c.output)],
        )

    same_info = old_info is not None and (
        old_info.classes == info.classes and old_info.preprocessing == info.preprocessing
    )
    if signature(old) != signature(new) or not same_info:
        raise DlkitError(
            f"model {new.name} in {model_dir.parent} has versions with a different format, "
            "inputs, outputs, classes or preprocessing; package this artifact under another "
            "--name, or remove that model folder first"
        )


def _write_model(
    repo: Path,
    config: mc.ModelConfig,
    version: int,
    files: dict[str, Path],
    info: ArtifactInfo,
    labels: bool = True,
) -> None:
    """Write `repo/<name>/<version>/` (files copied in) atomically, then config and labels.

    A model that does not exist yet is assembled in a hidden folder and renamed as a whole.
    """
    model_dir = repo / config.name
    if (model_dir / str(version)).exists():
        raise DlkitError(f"{model_dir / str(version)} already exists; choose another --version")
    if (model_dir / CONFIG_FILE).is_file():
        _check_compatible(model_dir, config, info)

    def fill(version_dir: Path) -> None:
        version_dir.mkdir(parents=True)
        for target, source in files.items():
            shutil.copyfile(source, version_dir / target)

    def finish(folder: Path) -> None:
        if labels:
            with atomic_path(folder / LABELS_FILE) as tmp:
                tmp.write_text("".join(f"{c}\n" for c in info.classes))
        write_config(config, folder / CONFIG_FILE)

    if model_dir.is_dir():
        with atomic_path(model_dir / str(version)) as tmp:
            fill(tmp)
        finish(model_dir)
    else:
        with atomic_path(model_dir) as tmp:
            fill(tmp / str(version))
            finish(tmp)


def package_artifact(
    artifact: str | os.PathLike,
    repo: str | os.PathLike = "model_repository",
    name: str | None = None,
    version: int | None = None,
    options: PackageOptions | None = None,
) -> PackageResult:
    """Add `artifact` (dlkit ONNX or TorchScript) to the model repository `repo` as a new
    version of model `name` (default: the artifact's file stem); returns what was written.

    Raises DlkitError for a checkpoint (export it first), an existing version, a model whose
    existing config does not fit, or options that contradict the artifact.
    """
    options = options or PackageOptions()
    if options.backend not in BACKENDS:
        raise DlkitError(f"unknown backend {options.backend!r}; choose native or python")
    if options.kind not in KINDS:
        raise DlkitError(f"unknown instance kind {options.kind!r}; choose auto, cpu or gpu")
    if options.instances < 1 or options.threads < 0 or options.max_queue_delay_us < 0:
        raise DlkitError("--instances must be at least 1, --threads and the queue delay >= 0")
    path, repo = Path(artifact), Path(repo)
    fmt = sniff_format(path)
    if fmt == "checkpoint":
        raise DlkitError(
            f"{path} is a checkpoint; Triton serves exported models. Run "
            f"`dlkit export {path}` and package the .onnx or .torchscript.pt"
        )
    info = read_artifact_info(path)
    name = name or default_name(path)
    if not _NAME.match(name):
        raise DlkitError(f"model name {name!r} must be letters, digits, '_', '-' or '.'")
    tensors = _io_tensors(path, fmt, info, options.backend)
    static = tensors[0].dims != info.preprocessing.input_shape
    max_batch_size = options.max_batch_size
    if max_batch_size is None:
        max_batch_size = 0 if static else DEFAULT_MAX_BATCH_SIZE
    if max_batch_size < 0 or (static and max_batch_size > 0):
        raise DlkitError(
            f"{path} has a fixed batch size, so Triton cannot batch it: use --max-batch-size 0 "
            "(or export with a dynamic batch)"
            if static
            else "--max-batch-size must be >= 0"
        )
    if options.preprocess and static:
        raise DlkitError("--preprocess needs an artifact with a dynamic batch dimension")
    if version is None:
        version = max(existing_versions(repo / name), default=0) + 1
    if version < 1:
        raise DlkitError("--version must be at least 1")

    config = classifier_config(name, fmt, info, tensors, options, max_batch_size)
    model_file = "model.onnx" if fmt == "onnx" else "model.pt"
    files = {model_file: path}
    if options.backend == "python":
        files["model.py"] = BACKEND_SOURCES / "classifier.py"
    else:
        config.default_model_filename = model_file
    _write_model(repo, config, version, files, info)
    models = [name]
    if options.preprocess:
        pre = preprocess_config(f"{name}_preprocess", info, tensors[0], options, max_batch_size)
        ens = ensemble_config(f"{name}_ensemble", config, pre, info)
        # Both are stateless given their config: write version 1 once, keep it afterwards.
        for model, files, labels in (
            (pre, {"model.py": BACKEND_SOURCES / "preprocess.py"}, False),
            (ens, {}, True),
        ):
            if not existing_versions(repo / model.name):
                _write_model(repo, model, 1, files, info, labels=labels)
            else:
                _check_compatible(repo / model.name, model, info)
            models.append(model.name)
    return PackageResult(
        artifact=str(path),
        model=name,
        version=version,
        backend=options.backend,
        platform=config.platform or config.backend,
        max_batch_size=max_batch_size,
        models=models,
        path=str(repo / name / str(version)),
    )


def package_artifacts(
    artifacts: list[str | os.PathLike],
    repo: str | os.PathLike = "model_repository",
    name: str | None = None,
    version: int | None = None,
    options: PackageOptions | None = None,
) -> list[PackageResult]:
    """Package several artifacts. Names default to the file stems; when two stems collide
    (`best.onnx`, `best.torchscript.pt`) each gets its format as a suffix."""
    if name and len(artifacts) > 1:
        raise DlkitError("--name names one model; package several artifacts without --name")
    names = [name or default_name(a) for a in artifacts]
    if len(set(names)) < len(names):
        names = [f"{n}_{sniff_format(a)}" for n, a in zip(names, artifacts, strict=True)]
    return [
        package_artifact(a, repo, n, version, options)
        for a, n in zip(artifacts, names, strict=True)
    ]
