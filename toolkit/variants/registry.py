"""What a variant is, and the one list of them that `dlkit bench` and `dlkit deploy` share.

A variant is a way to run one model: a format, a precision (or quantization mode), and how it
is built — eager PyTorch, `torch.compile`, torchao's PT2E int8, or a file exported (and maybe
quantized) and run through its format's runner. Names are the same everywhere. This module
imports nothing heavy, so the CLI can list the variants in its help.

Adding a runtime: one module under `toolkit/artifacts/` with a Handler (export, runner), one
entry in `toolkit.artifacts.registry.FORMATS`, and its variants here with `build=FILE`.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.choices import Device, Format, Precision, QuantizeMode
from toolkit.errors import DlkitError

# How a variant is built (see toolkit.variants.build).
EAGER, COMPILE, PT2E, FILE = "eager", "compile", "pt2e", "file"


@dataclass(frozen=True)
class Variant:
    """One way to run a model.

    `precision` None means autocast in the device's type (fp16 on CUDA, bf16 on the CPU); fp16
    or bf16 on an eager or compiled variant means its weights and activations are cast to it
    (`cuda_only`: fp16 kernels are fast on GPUs only). `simplicity` orders variants that tie on
    speed in `dlkit deploy`: the lower, the simpler. File variants can be packaged for Triton.
    """

    name: str
    description: str
    build: str
    format: Format = Format.CHECKPOINT
    precision: Precision | None = Precision.FP32
    quantize: QuantizeMode | None = None
    simplicity: int = 0
    channels_last: bool = False
    cuda_only: bool = False

    @property
    def autocast(self) -> bool:
        return self.precision is None

    @property
    def cast(self) -> Precision | None:
        """The precision the model itself is cast to (eager and compiled variants), if any."""
        if self.build in (EAGER, COMPILE) and self.precision in (Precision.FP16, Precision.BF16):
            return self.precision
        return None

    @property
    def servable(self) -> bool:
        return self.build == FILE

    def precision_on(self, device: str) -> Precision:
        if self.precision is not None:
            return self.precision
        return Precision.FP16 if device == Device.CUDA else Precision.BF16


BASELINE = "eager-fp32"

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(BASELINE, "eager PyTorch, fp32", EAGER, simplicity=-1),
        Variant(
            "eager-amp-cl",
            "eager PyTorch under autocast (fp16 on CUDA, bf16 on CPU), channels_last",
            EAGER,
            precision=None,
            channels_last=True,
        ),
        Variant(
            "eager-fp16-cl",
            "eager PyTorch, weights and activations in fp16, channels_last (CUDA)",
            EAGER,
            precision=Precision.FP16,
            channels_last=True,
            cuda_only=True,
        ),
        Variant(
            "torchscript-fp32",
            "frozen TorchScript from `dlkit export`, fp32",
            FILE,
            Format.TORCHSCRIPT,
            simplicity=1,
        ),
        Variant(
            "compile-fp32",
            "torch.compile fp32 (inductor with freezing on CPU; CUDA graphs on CUDA)",
            COMPILE,
        ),
        Variant(
            "compile-amp-cl",
            "torch.compile under autocast (fp16 on CUDA, bf16 on CPU), channels_last",
            COMPILE,
            precision=None,
            channels_last=True,
        ),
        Variant(
            "compile-fp16-cl",
            "torch.compile (CUDA graphs), weights and activations in fp16, channels_last (CUDA)",
            COMPILE,
            precision=Precision.FP16,
            channels_last=True,
            cuda_only=True,
        ),
        Variant(
            "onnx-fp32",
            "ONNX Runtime fp32 from `dlkit export`, all graph optimisations",
            FILE,
            Format.ONNX,
        ),
        Variant(
            "onnx-int8-dynamic",
            "ONNX Runtime, dynamic int8 (`dlkit quantize`)",
            FILE,
            Format.ONNX,
            Precision.INT8,
            QuantizeMode.DYNAMIC,
            simplicity=2,
        ),
        Variant(
            "onnx-int8-static",
            "ONNX Runtime, static int8 QDQ, per-channel, calibrated (`dlkit quantize`)",
            FILE,
            Format.ONNX,
            Precision.INT8,
            QuantizeMode.STATIC,
            simplicity=3,
        ),
        Variant(
            "onnx-fp16",
            "ONNX Runtime, fp16 weights and activations",
            FILE,
            Format.ONNX,
            Precision.FP16,
            QuantizeMode.FP16,
            simplicity=2,
        ),
        Variant(
            "torch-int8-pt2e",
            "torchao PT2E static int8 (x86 inductor quantizer) under torch.compile",
            PT2E,
            precision=Precision.INT8,
        ),
    )
}

# Earlier names, still accepted on the command line.
ALIASES = {"torchscript": "torchscript-fp32", "compile": "compile-fp32"}

# What `dlkit bench` runs without --variants. bf16 compile is left out on the CPU: few CPUs
# have native bf16 (AVX-512 BF16, AMX) and compiling it costs as much as fp32.
DEFAULT_VARIANTS = {
    Device.CPU: (
        BASELINE,
        "eager-amp-cl",
        "torchscript-fp32",
        "compile-fp32",
        "onnx-fp32",
        "onnx-int8-dynamic",
        "onnx-int8-static",
        "torch-int8-pt2e",
    ),
    Device.CUDA: (
        BASELINE,
        "eager-amp-cl",
        "eager-fp16-cl",
        "torchscript-fp32",
        "compile-fp32",
        "compile-amp-cl",
        "compile-fp16-cl",
        "onnx-fp32",
        "onnx-fp16",
    ),
}

# What `dlkit deploy` can package for each device (file variants; eager fp32 is the baseline).
DEPLOY_CANDIDATES = {
    Device.CPU: ("onnx-fp32", "torchscript-fp32", "onnx-int8-dynamic", "onnx-int8-static"),
    Device.CUDA: ("onnx-fp32", "torchscript-fp32", "onnx-fp16"),
}


def canonical_name(name: str) -> str:
    """The registered name for `name` (old aliases mapped), or `name` itself if unknown."""
    return ALIASES.get(name, name)


def get_variant(name: str) -> Variant:
    """The variant called `name` (or an alias of it); DlkitError naming the choices."""
    variant = VARIANTS.get(canonical_name(name))
    if variant is None:
        raise DlkitError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return variant


def resolve_variants(names: list[str] | None, device: str) -> list[str]:
    """The names to run: the device's defaults, every registered variant for "all", or the
    given names in order (aliases mapped; unknown ones are kept, and skipped with a reason)."""
    if not names:
        return list(DEFAULT_VARIANTS[Device(device)])
    if names == ["all"]:
        return list(VARIANTS)
    return list(dict.fromkeys(canonical_name(n) for n in names))
