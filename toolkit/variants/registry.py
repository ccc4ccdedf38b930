"""What a variant is, and the one list of them that `dlkit bench` and `dlkit deploy` share.

A variant is a way to run one model. Two kinds:

- in-process variants (`Variant`): eager PyTorch, `torch.compile`, torchao's PT2E int8, built
  here from the fp32 model by `toolkit.variants.build`;
- file variants (`toolkit.artifacts.format_plugin.FileVariant`): an artifact of one format,
  made from its parent variant's file by its format plugin, verified once and kept in the
  artifact store (`toolkit.variants.store`). Each format plugin declares its own: adding a
  runtime adds its variants here without a line changing in this module.

Names are the same everywhere. This module imports nothing heavy, so the CLI can list the
variants in its help.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.artifacts.format_plugin import FileVariant, ModelProfile, VariantBase
from toolkit.artifacts.registry import plugins
from toolkit.choices import Device, Format, Precision
from toolkit.cpu import cpu_features
from toolkit.errors import DlkitError

# How an in-process variant is built (see toolkit.variants.build).
EAGER, COMPILE, PT2E = "eager", "compile", "pt2e"


@dataclass(frozen=True, kw_only=True)
class Variant(VariantBase):
    """A variant run inside this process from the fp32 model.

    fp16 or bf16 on an eager or compiled variant means its weights and activations are cast
    to it (`cuda_only`: fp16 kernels are fast on GPUs only); `precision` None means autocast.
    `native_bf16`: computes in bf16 on the CPU, so offered by default only where bf16 is
    native (AVX-512 BF16 or AMX; elsewhere it is emulated, ~25x slower than fp32).
    """

    build: str
    native_bf16: bool = False
    format: str = Format.CHECKPOINT  # built from the checkpoint's model, in this process

    @property
    def cast(self) -> Precision | None:
        """The precision the model itself is cast to (eager and compiled variants), if any."""
        if self.build in (EAGER, COMPILE) and self.precision in (Precision.FP16, Precision.BF16):
            return self.precision
        return None


BASELINE = "eager-fp32"

IN_PROCESS: tuple[Variant, ...] = (
    Variant(name=BASELINE, description="eager PyTorch, fp32", build=EAGER, simplicity=-1),
    Variant(
        name="eager-amp-cl",
        description="eager PyTorch under autocast (fp16 on CUDA, bf16 on CPU), channels_last",
        build=EAGER,
        precision=None,
        channels_last=True,
        native_bf16=True,
    ),
    Variant(
        name="eager-fp16-cl",
        description="eager PyTorch, weights and activations in fp16, channels_last (CUDA)",
        build=EAGER,
        precision=Precision.FP16,
        channels_last=True,
        cuda_only=True,
    ),
    Variant(
        name="compile-fp32",
        description="torch.compile fp32 (inductor with freezing on CPU; CUDA graphs on CUDA)",
        build=COMPILE,
    ),
    Variant(
        name="compile-amp-cl",
        description="torch.compile under autocast (fp16 on CUDA, bf16 on CPU: inductor with "
        "freezing), channels_last",
        build=COMPILE,
        precision=None,
        channels_last=True,
        native_bf16=True,
    ),
    Variant(
        name="compile-fp16-cl",
        description="torch.compile (CUDA graphs), weights and activations in fp16, "
        "channels_last (CUDA)",
        build=COMPILE,
        precision=Precision.FP16,
        channels_last=True,
        cuda_only=True,
    ),
    Variant(
        name="torch-int8-pt2e",
        description="torchao PT2E static int8 (x86 inductor quantizer) under torch.compile",
        build=PT2E,
        precision=Precision.INT8,
    ),
)

# Earlier names, still accepted on the command line.
ALIASES = {"torchscript": "torchscript-fp32", "compile": "compile-fp32"}

# In-process variants `dlkit bench` runs by default, per device; the file variants of every
# format that runs there join them (`default_variants`).
IN_PROCESS_DEFAULTS = {
    Device.CPU: (BASELINE, "eager-amp-cl", "compile-fp32", "compile-amp-cl", "torch-int8-pt2e"),
    Device.CUDA: (
        BASELINE,
        "eager-amp-cl",
        "eager-fp16-cl",
        "compile-fp32",
        "compile-amp-cl",
        "compile-fp16-cl",
    ),
}
# The format whose fp32 variant `dlkit deploy` packages beside the selected one: the one
# every Triton serves (the NGC image's onnxruntime backend, or the python backend).
FALLBACK_FORMAT = "onnx"


def variants() -> dict[str, VariantBase]:
    """Every variant by name: the in-process ones, then each format's file variants."""
    found: dict[str, VariantBase] = {v.name: v for v in IN_PROCESS}
    for plugin in plugins():
        found.update((v.name, v) for v in plugin.variants())
    return found


def file_variants() -> dict[str, FileVariant]:
    return {n: v for n, v in variants().items() if isinstance(v, FileVariant)}


def canonical_name(name: str) -> str:
    """The registered name for `name` (old aliases mapped), or `name` itself if unknown."""
    return ALIASES.get(name, name)


def get_variant(name: str) -> VariantBase:
    """The variant called `name` (or an alias of it); DlkitError naming the choices."""
    found = variants()
    variant = found.get(canonical_name(name))
    if variant is None:
        raise DlkitError(f"unknown variant {name!r}; choose from {', '.join(found)}")
    return variant


def lineage(name: str) -> list[FileVariant]:
    """A file variant and its ancestors, the root (made from the model) first."""
    chain: list[FileVariant] = []
    found = file_variants()
    while name:
        if name not in found or found[name] in chain:
            raise DlkitError(f"variant {chain[-1].name if chain else name} has no parent {name}")
        chain.insert(0, found[name])
        name = found[name].parent or ""
    return chain


def fp32_variant(fmt: str) -> FileVariant:
    """The fp32 file variant of format `fmt` (what `dlkit export --<fmt>` writes)."""
    for variant in file_variants().values():
        if variant.format == fmt and variant.precision == Precision.FP32:
            return variant
    raise DlkitError(f"the {fmt} format has no fp32 variant")


def _offered(variant: FileVariant, device: str, profile: ModelProfile | None) -> bool:
    """Whether a file variant is offered by default on `device`, on this CPU, for a model
    with `profile` (None: any model)."""
    if not variant.default or variant.unavailable(device, cpu_features()):
        return False
    return profile is None or variant.suits is None or variant.suits(profile)


def _in_process_offered(name: str, device: str) -> bool:
    variant = next(v for v in IN_PROCESS if v.name == name)
    return device == Device.CUDA or not variant.native_bf16 or cpu_features().bf16


def default_variants(device: str, profile: ModelProfile | None = None) -> list[str]:
    """What `dlkit bench` runs without --variants on this machine, for a model with `profile`."""
    names = [n for n in IN_PROCESS_DEFAULTS[Device(device)] if _in_process_offered(n, device)]
    names += [n for n, v in file_variants().items() if _offered(v, device, profile)]
    return names


def deploy_candidates(device: str, profile: ModelProfile | None = None) -> list[str]:
    """The file variants `dlkit deploy` tries on `device`, this CPU and this model."""
    return [n for n, v in file_variants().items() if _offered(v, device, profile)]


def resolve_variants(
    names: list[str] | None, device: str, profile: ModelProfile | None = None
) -> list[str]:
    """The names to run: the device's defaults, every registered variant for "all", or the
    given names in order (aliases mapped; unknown ones are kept, and skipped with a reason)."""
    if not names:
        return default_variants(device, profile)
    if names == ["all"]:
        return list(variants())
    return list(dict.fromkeys(canonical_name(n) for n in names))
