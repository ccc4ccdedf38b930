"""Every closed set of names dlkit offers, in one import-light place.

The CLI builds its `click.Choice`s from these, and configs validate against them, so a name is
declared once. Each is a `str` enum: members compare equal to their text (`Format.ONNX ==
"onnx"`), print as it, and go into JSON as it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

from toolkit.errors import DlkitError

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """Base of every choice set: the value is what users type and what files store."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def names(cls) -> list[str]:
        """The values, in declaration order (for `click.Choice` and messages)."""
        return [member.value for member in cls]

    @classmethod
    def parse(cls: type[C], value: str | C, what: str | None = None) -> C:
        """The member for `value`; DlkitError naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            label = what or cls.__name__.lower()
            raise DlkitError(
                f"unknown {label} {value!r}; choose from {', '.join(cls.names())}"
            ) from None


class Format:
    """The names of dlkit's built-in formats (how a model is stored, or reached). Formats are
    plugins (`toolkit.artifacts.registry`), so this set is open: a format name is a plain
    string, and these are the ones dlkit's own code refers to."""

    CHECKPOINT = "checkpoint"
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    SERVED = "served"  # a model behind a Triton endpoint (grpc://, http://)


class Precision(Choice):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


class QuantizeMode(Choice):
    """What `dlkit quantize` does to an fp32 ONNX file."""

    DYNAMIC = "dynamic"
    STATIC = "static"
    FP16 = "fp16"


class CalibrationMethod(Choice):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class Device(Choice):
    """Where models run. AUTO picks CUDA when there is a GPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    @classmethod
    def targets(cls) -> list[str]:
        """The devices one can optimise and benchmark for (no `auto`)."""
        return [cls.CPU.value, cls.CUDA.value]


class Autocast(Choice):
    """Mixed precision for training and inference."""

    OFF = "off"
    FP16 = "fp16"
    BF16 = "bf16"


class Objective(Choice):
    LATENCY = "latency"
    THROUGHPUT = "throughput"


class Optimizer(Choice):
    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


class Scheduler(Choice):
    COSINE = "cosine"
    ONECYCLE = "onecycle"
    STEP = "step"
    PLATEAU = "plateau"
    NONE = "none"


class Monitor(Choice):
    VAL_ACCURACY = "val_accuracy"
    VAL_LOSS = "val_loss"


class Loss(Choice):
    CE = "ce"
    FOCAL = "focal"


class Dataset(Choice):
    """Datasets embedded in dlkit (no download)."""

    DIGITS = "digits"


class Split(Choice):
    TRAIN = "train"
    VAL = "val"
    ALL = "all"


class Backend(Choice):
    """How Triton runs a packaged model."""

    NATIVE = "native"  # Triton's ONNX Runtime / PyTorch backends (the NGC image)
    PYTHON = "python"  # the python backend (what the pip-installed server can serve)


class Accelerator(Choice):
    """An execution accelerator Triton's native onnxruntime backend starts for an ONNX model."""

    NONE = "none"
    OPENVINO = "openvino"  # ONNX Runtime's OpenVINO execution provider, on the CPU
    TENSORRT = "tensorrt"  # ONNX Runtime's TensorRT execution provider, on GPUs (fp16)


class InstanceKind(Choice):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"


class Protocol(Choice):
    GRPC = "grpc"
    HTTP = "http"


def plain(value: Any) -> Any:
    """`value` with every choice replaced by its text, recursively: what may go into a
    checkpoint (read back with `weights_only=True`, which refuses unknown classes) or JSON."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value
