"""Triton model configurations, built with Triton's own protobuf (`model_config_pb2`).

Every `config.pbtxt` dlkit writes is made here and parsed back before it is written; names,
dims and dtypes come from the artifact itself. `ServingOptions` is how a model is served
(instances, dynamic batching, threads); `dlkit package` and `dlkit tune` both build from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts.metadata import ArtifactInfo, parse_info
from toolkit.artifacts.onnx import load_model_proto
from toolkit.choices import Backend, Format, InstanceKind
from toolkit.errors import DlkitError
from toolkit.files import write_text
from toolkit.triton.release import DEFAULT_QUEUE_DELAY_US

KINDS = {
    InstanceKind.AUTO: mc.ModelInstanceGroup.KIND_AUTO,
    InstanceKind.CPU: mc.ModelInstanceGroup.KIND_CPU,
    InstanceKind.GPU: mc.ModelInstanceGroup.KIND_GPU,
}
DEFAULT_MAX_BATCH_SIZE = 32
MAX_INSTANCES, MAX_THREADS, MAX_QUEUE_DELAY_US = 64, 256, 10_000_000
MAX_BATCH_SIZE = 65536
CONFIG_FILE, LABELS_FILE = "config.pbtxt", "labels.txt"
INFO_PARAMETER = "dlkit"  # config parameter holding the artifact's ArtifactInfo JSON
IMAGE_INPUT = "IMAGE"  # the preprocessing ensemble's input: encoded image bytes
MODEL_FILES = {Format.ONNX: "model.onnx", Format.TORCHSCRIPT: "model.pt"}
THREAD_PARAMETERS = ("intra_op_thread_count", "INTRA_OP_THREAD_COUNT")  # python/ORT, LibTorch
INTER_OP_PARAMETERS = ("inter_op_thread_count", "INTER_OP_THREAD_COUNT")

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
class ServingOptions:
    """How Triton serves a classifier. `max_batch_size=None` means the default for a dynamic
    batch dimension (and 0 for an artifact exported with a fixed batch)."""

    max_batch_size: int | None = None
    dynamic_batching: bool = True
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] = field(default_factory=tuple)
    instances: int = 1
    kind: InstanceKind = InstanceKind.AUTO
    threads: int = 0
    inter_op_threads: int = 1

    def __post_init__(self) -> None:
        InstanceKind.parse(self.kind, "instance kind")
        checks = [
            ("--instances", self.instances, 1, MAX_INSTANCES),
            ("--threads", self.threads, 0, MAX_THREADS),
            ("inter-op threads", self.inter_op_threads, 0, MAX_THREADS),
            ("--max-queue-delay-us", self.max_queue_delay_us, 0, MAX_QUEUE_DELAY_US),
        ]
        if self.max_batch_size is not None:
            checks.append(("--max-batch-size", self.max_batch_size, 0, MAX_BATCH_SIZE))
        checks += [
            ("preferred batch size", b, 1, MAX_BATCH_SIZE) for b in self.preferred_batch_sizes
        ]
        for name, value, low, high in checks:
            if not isinstance(value, int) or not low <= value <= high:
                raise DlkitError(f"{name} must be a whole number from {low} to {high}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "dynamic_batching": self.dynamic_batching,
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "instances": self.instances,
            "kind": str(self.kind),
            "threads": self.threads,
            "inter_op_threads": self.inter_op_threads,
        }


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # a Triton TYPE_* name
    dims: tuple[int, ...]  # without the batch dimension when the model batches


# --------------------------------------------------------------------------------- reading


def config_text(config: mc.ModelConfig) -> str:
    """Serialise through text_format and parse the text back as a check."""
    text = text_format.MessageToString(config)
    if text_format.Parse(text, mc.ModelConfig()) != config:
        raise DlkitError(f"config for {config.name} does not survive a round trip; please report")
    return text


def write_config(config: mc.ModelConfig, path: str | os.PathLike) -> None:
    """Write a config.pbtxt atomically."""
    write_text(path, config_text(config))


def read_config(path: str | os.PathLike) -> mc.ModelConfig:
    """Parse a config.pbtxt; a malformed one names itself."""
    try:
        return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise DlkitError(f"cannot read Triton config {path}: {exc}") from exc


def config_json(config: mc.ModelConfig) -> str:
    """The config as the JSON Triton's repository API takes for a load with an override."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def config_info(config: mc.ModelConfig) -> ArtifactInfo | None:
    """The ArtifactInfo a dlkit-written config carries, or None for other models."""
    param = config.parameters.get(INFO_PARAMETER)
    return parse_info(param.string_value, f"model {config.name}") if param else None


def io_tensors(path: Path, fmt: Format, info: ArtifactInfo, backend: str) -> tuple[Tensor, Tensor]:
    """Input and output as the model file declares them. ONNX graphs are read; TorchScript has
    no named signature, so its shapes come from the metadata and its names follow the native
    PyTorch backend's `INPUT__0`/`OUTPUT__0` convention."""
    if fmt == Format.TORCHSCRIPT:
        dtype = _INFO_DTYPES.get(info.input_dtype, "TYPE_FP32")
        shape = info.preprocessing.input_shape
        if info.static_batch is not None and not 1 <= info.static_batch <= MAX_BATCH_SIZE:
            raise DlkitError(f"{path}: its metadata gives a fixed batch of {info.static_batch}")
        if info.static_batch:
            dims_in, dims_out = (info.static_batch, *shape), (info.static_batch, info.num_classes)
        else:
            dims_in, dims_out = shape, (info.num_classes,)
        names = ("INPUT__0", "OUTPUT__0") if backend == Backend.NATIVE else ("input", "logits")
        return Tensor(names[0], dtype, dims_in), Tensor(names[1], "TYPE_FP32", dims_out)
    graph = load_model_proto(path).graph
    _refuse_external_data(path, graph)
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
            raise DlkitError(f"{path}: tensor {value.name} has an unsupported type {t.elem_type}")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return Tensor(value.name, dtype, dims)

    tin, tout = tensor(inputs[0]), tensor(graph.output[0])
    if tin.dims and tin.dims[0] == -1:  # a dynamic batch dimension: Triton owns it
        tin, tout = (
            Tensor(tin.name, tin.dtype, tin.dims[1:]),
            Tensor(tout.name, tout.dtype, tout.dims[1:]),
        )
    if any(d < 1 for d in tin.dims + tout.dims):
        raise DlkitError(f"{path}: only the batch dimension may be dynamic; got {tin.dims}")
    if tout.dims[-1:] != (info.num_classes,):
        raise DlkitError(
            f"{path}: the model answers {tout.dims} outputs but its metadata lists "
            f"{info.num_classes} classes"
        )
    return tin, tout


def _refuse_external_data(path: Path, graph) -> None:
    """Triton gets `model.onnx` alone: weights kept in other files (ONNX external data)
    would be missing there, or, named with a path, read from anywhere on the server."""
    tensors = [*graph.initializer]
    for node in graph.node:
        for attribute in node.attribute:
            tensors += [attribute.t, *attribute.tensors]
    external = [t.name for t in tensors if t.data_location == t.EXTERNAL]
    if external:
        raise DlkitError(
            f"{path} keeps {len(external)} tensor(s) in separate files (ONNX external data, "
            f"e.g. {external[0]!r}); Triton would get model.onnx alone. Export it as one file "
            "(`dlkit export`, or onnx.save(model, path, save_as_external_data=False))"
        )


# -------------------------------------------------------------------------------- building


def _parameters(config: mc.ModelConfig, values: dict[str, Any]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def classifier_config(
    name: str,
    fmt: Format,
    info: ArtifactInfo,
    tensors: tuple[Tensor, Tensor],
    backend: Backend,
    options: ServingOptions,
    max_batch_size: int,
) -> mc.ModelConfig:
    """The classifier's config: native ONNX Runtime / LibTorch, or the python backend."""
    tin, tout = tensors
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    threads = {
        "intra_op_thread_count": options.threads,
        "inter_op_thread_count": options.inter_op_threads,
    }
    if backend == Backend.PYTHON:
        config.backend = "python"
        files = {"artifact_format": fmt, "artifact_file": MODEL_FILES[fmt]}
        _parameters(config, files | threads)
    elif fmt == Format.ONNX:
        config.platform = "onnxruntime_onnx"
        _parameters(config, threads)  # ONNX Runtime backend parameters; 0: every core
    else:
        config.platform = "pytorch_libtorch"
        _parameters(
            config,
            {
                "INFERENCE_MODE": "true",
                "INTRA_OP_THREAD_COUNT": options.threads,
                "INTER_OP_THREAD_COUNT": options.inter_op_threads,
            },
        )
    if backend == Backend.NATIVE:
        config.default_model_filename = MODEL_FILES[fmt]
    config.input.add(name=tin.name, data_type=mc.DataType.Value(tin.dtype), dims=tin.dims)
    config.output.add(
        name=tout.name,
        data_type=mc.DataType.Value(tout.dtype),
        dims=tout.dims,
        label_filename=LABELS_FILE,
    )
    apply_serving(config, options)
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    warmup.inputs[tin.name].data_type = mc.DataType.Value(tin.dtype)
    warmup.inputs[tin.name].dims.extend(tin.dims)
    warmup.inputs[tin.name].zero_data = True
    _parameters(config, {INFO_PARAMETER: info.to_json()})
    return config


def apply_serving(config: mc.ModelConfig, options: ServingOptions) -> mc.ModelConfig:
    """Set instances, dynamic batching and threads of `config` (in place) from `options`.

    `options.max_batch_size`, when set, replaces the config's (a batching model's only).
    """
    if options.max_batch_size is not None and config.max_batch_size > 0:
        if options.max_batch_size < 1:
            raise DlkitError(f"{config.name} batches; its max_batch_size must be at least 1")
        config.max_batch_size = options.max_batch_size
    del config.instance_group[:]
    config.instance_group.add(count=options.instances, kind=KINDS[InstanceKind(options.kind)])
    config.ClearField("dynamic_batching")
    if config.max_batch_size > 0 and options.dynamic_batching:
        batching = config.dynamic_batching
        batching.SetInParent()  # on even when every field keeps its default (no queue delay)
        batching.max_queue_delay_microseconds = options.max_queue_delay_us
        sizes = [b for b in options.preferred_batch_sizes if b <= config.max_batch_size]
        batching.preferred_batch_size.extend(sizes)
    values = {key: options.threads for key in THREAD_PARAMETERS}
    values |= {key: options.inter_op_threads for key in INTER_OP_PARAMETERS}
    for key, value in values.items():
        if key in config.parameters:
            config.parameters[key].string_value = str(value)
    return config


def parameter(config: mc.ModelConfig, *keys: str) -> str:
    """The value of the first of `keys` among the config's parameters, or "" (reading a
    protobuf map with [] would add the key)."""
    return next((config.parameters[k].string_value for k in keys if k in config.parameters), "")


def serving_options(config: mc.ModelConfig) -> ServingOptions:
    """The options `config` serves with (what `apply_serving` set), so that a new version
    can be written without changing them."""
    group = config.instance_group[0] if config.instance_group else mc.ModelInstanceGroup()
    kinds = {value: kind for kind, value in KINDS.items()}
    batching = config.dynamic_batching
    threads = parameter(config, *THREAD_PARAMETERS) or "0"
    inter = parameter(config, *INTER_OP_PARAMETERS) or "1"
    on = config.HasField("dynamic_batching")
    try:
        return ServingOptions(
            max_batch_size=config.max_batch_size,
            dynamic_batching=on or config.max_batch_size == 0,
            max_queue_delay_us=batching.max_queue_delay_microseconds
            if on
            else DEFAULT_QUEUE_DELAY_US,
            preferred_batch_sizes=tuple(batching.preferred_batch_size),
            instances=group.count or 1,
            kind=kinds.get(group.kind, InstanceKind.AUTO),
            threads=int(threads),
            inter_op_threads=int(inter),
        )
    except ValueError:
        raise DlkitError(
            f"config of {config.name}: thread counts {threads!r}, {inter!r} are not numbers"
        ) from None


def preprocess_config(
    name: str, info: ArtifactInfo, target: Tensor, options: ServingOptions, max_batch_size: int
) -> mc.ModelConfig:
    """Python backend: encoded image bytes -> float tensor shaped like the classifier input."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    config.input.add(name="image", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="input", data_type=mc.DataType.Value(target.dtype), dims=target.dims)
    config.instance_group.add(count=options.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    _parameters(config, {INFO_PARAMETER: info.to_json()})
    return config


def ensemble_config(
    name: str, classifier: mc.ModelConfig, preprocess: mc.ModelConfig, info: ArtifactInfo
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
    _parameters(config, {INFO_PARAMETER: info.to_json()})
    return config
