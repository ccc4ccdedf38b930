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

from toolkit.artifacts.format_plugin import FormatPlugin, Tensor
from toolkit.artifacts.metadata import ArtifactInfo, parse_info
from toolkit.artifacts.registry import plugins
from toolkit.choices import Accelerator, Backend, Device, InstanceKind
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
PYTHON_THREADS = ("intra_op_thread_count", "inter_op_thread_count")  # dlkit's python backend
# Execution accelerators a native backend can be given (`optimization` in the config), and the
# instances they run on.
ACCELERATORS = {Accelerator.OPENVINO: "cpu", Accelerator.TENSORRT: "gpu"}


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
    accelerator: str = ""  # a native backend's execution accelerator (`ACCELERATORS`)

    def __post_init__(self) -> None:
        InstanceKind.parse(self.kind, "instance kind")
        if self.accelerator == Accelerator.NONE:
            object.__setattr__(self, "accelerator", "")
        if self.accelerator and self.accelerator not in ACCELERATORS:
            raise DlkitError(
                f"unknown accelerator {self.accelerator!r}; choose from {', '.join(ACCELERATORS)}"
            )
        check_accelerator_kind(self.accelerator, InstanceKind(self.kind))
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
            "accelerator": str(self.accelerator),
        }


def model_file_names() -> list[str]:
    """The model file each format has in a version folder (model.onnx, model.pt, model.xml)."""
    return [p.triton.model_file for p in plugins() if p.triton is not None]


def check_accelerator_kind(accelerator: str, kind: InstanceKind) -> None:
    """Triton starts a `gpu_execution_accelerator` (TensorRT) for GPU instances only and a
    `cpu_execution_accelerator` (OpenVINO) for CPU ones: TensorRT needs KIND_GPU said outright
    (KIND_AUTO would leave it unused on a server without a GPU), OpenVINO anything but KIND_GPU."""
    if not accelerator:
        return
    on_gpu = ACCELERATORS[Accelerator(accelerator)] == "gpu"
    if on_gpu and kind != InstanceKind.GPU:
        raise DlkitError(
            f"--accelerator {accelerator} runs on GPU instances, and these are KIND_"
            f"{InstanceKind(kind).name}: package with --device cuda (KIND_GPU)"
        )
    if not on_gpu and kind == InstanceKind.GPU:
        raise DlkitError(
            f"--accelerator {accelerator} runs on CPU instances, and these are KIND_GPU: "
            "package with --device cpu, or without the accelerator"
        )


def instance_kind(device: str | None, kind: InstanceKind | str) -> InstanceKind:
    """The instance kind for `dlkit package --device DEVICE --kind KIND`: a device fixes the
    kind (cuda: KIND_GPU, cpu: KIND_CPU) unless --kind already says the same."""
    kind = InstanceKind.parse(kind, "instance kind")
    if device is None or device == Device.AUTO:
        return kind
    wanted = InstanceKind.GPU if Device.parse(device, "device") == Device.CUDA else InstanceKind.CPU
    if kind not in (InstanceKind.AUTO, wanted):
        raise DlkitError(
            f"--device {device} serves on KIND_{wanted.name} instances; drop --kind {kind}"
        )
    return wanted


def thread_parameters() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every config key that holds intra-op and inter-op thread counts: the python backend's
    and each format's native backend's."""
    intra, inter = [PYTHON_THREADS[0]], [PYTHON_THREADS[1]]
    for plugin in plugins():
        if plugin.triton is not None:
            keys = plugin.thread_parameters()
            intra.append(keys[0])
            inter.append(keys[1])
    return tuple(dict.fromkeys(filter(None, intra))), tuple(dict.fromkeys(filter(None, inter)))


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


# -------------------------------------------------------------------------------- building


def _parameters(config: mc.ModelConfig, values: dict[str, Any]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def classifier_config(
    name: str,
    plugin: FormatPlugin,
    info: ArtifactInfo,
    tensors: tuple[Tensor, Tensor],
    backend: Backend,
    options: ServingOptions,
    max_batch_size: int,
) -> mc.ModelConfig:
    """The classifier's config: the format's native backend (NGC image), or the python
    backend running the format's stub runner (the pip-installed server)."""
    tin, tout = tensors
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    native = plugin.triton
    if backend == Backend.PYTHON:
        config.backend = "python"
        files = {"artifact_format": plugin.name, "artifact_file": native.model_file}
        threads = dict(
            zip(PYTHON_THREADS, (options.threads, options.inter_op_threads), strict=True)
        )
        _parameters(config, files | threads | plugin.stub_parameters(info))
    else:
        if not (native.platform or native.backend):
            raise DlkitError(
                f"no native Triton backend serves {plugin.name} models; package them with "
                "--backend python"
            )
        config.platform, config.backend = native.platform, native.backend
        config.default_model_filename = native.model_file
        _parameters(
            config, plugin.triton_parameters(options.threads, options.inter_op_threads, info)
        )
        if options.accelerator and options.accelerator not in plugin.accelerators:
            raise DlkitError(
                f"--accelerator {options.accelerator} does not apply to {plugin.name} models on "
                f"Triton's {native.server_backend} backend"
            )
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
    intra, inter = thread_parameters()
    values = {key: options.threads for key in intra}
    values |= {key: options.inter_op_threads for key in inter}
    for key, value in values.items():
        if key in config.parameters:
            config.parameters[key].string_value = str(value)
    _set_accelerator(config, options.accelerator)
    return config


def _set_accelerator(config: mc.ModelConfig, name: str) -> None:
    """`optimization { execution_accelerators { cpu_execution_accelerator { name } } }` (or
    `gpu_execution_accelerator`, with TensorRT's parameters) on a native ONNX model: Triton's
    onnxruntime backend starts that execution provider."""
    accelerators = config.optimization.execution_accelerators
    del accelerators.cpu_execution_accelerator[:]
    del accelerators.gpu_execution_accelerator[:]
    if name:
        if config.backend == "python":
            raise DlkitError("--accelerator applies to Triton's native onnxruntime backend")
        if ACCELERATORS[Accelerator(name)] == "gpu":
            added = accelerators.gpu_execution_accelerator.add(name=name)
            added.parameters.update(accelerator_parameters(name))
        else:
            accelerators.cpu_execution_accelerator.add(name=name)
    if not accelerators.cpu_execution_accelerator and not accelerators.gpu_execution_accelerator:
        config.optimization.ClearField("execution_accelerators")
    if not config.optimization.ListFields():
        config.ClearField("optimization")


def accelerator_parameters(name: str) -> dict[str, str]:
    """The parameters dlkit gives an execution accelerator (TensorRT: fp16, an engine cache)."""
    if name == Accelerator.TENSORRT:
        from toolkit.artifacts.onnx_cuda import TensorRTSettings

        return TensorRTSettings().triton_parameters()
    return {}


def accelerator(config: mc.ModelConfig) -> str:
    """The execution accelerator a config names (CPU or GPU), or ""."""
    accelerators = config.optimization.execution_accelerators
    found = [*accelerators.cpu_execution_accelerator, *accelerators.gpu_execution_accelerator]
    return found[0].name if found else ""


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
    intra_keys, inter_keys = thread_parameters()
    threads = parameter(config, *intra_keys) or "0"
    inter = parameter(config, *inter_keys) or "1"
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
            accelerator=accelerator(config),
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
