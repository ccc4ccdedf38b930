"""The variant registry: every way dlkit can run one model, each built by one small function.

A builder takes the `Source` (the fp32 model, its metadata, the device) and a batch size and
returns a runner: a callable from a float32 N×C×H×W numpy batch to logits, usually a
`toolkit.runtime.Runner`. A builder that cannot work here raises `VariantSkipped("why")`; the
sweep records the reason and carries on. Files a variant needs (exports, quantized copies) are
made once per sweep through `Source.file`, so adding a variant is a few lines, e.g.:

    def onnx_int8_dynamic(source, batch_size):
        from toolkit.quantize import quantize_dynamic_onnx

        fp32 = source.export("onnx")
        path = source.file("int8-dynamic.onnx", lambda dst: quantize_dynamic_onnx(fp32, dst))
        return onnx_runner(source, path)

    VARIANTS["onnx-int8-dynamic"] = Variant(onnx_int8_dynamic, "ONNX Runtime, dynamic int8")

This module imports nothing heavy, so the CLI can list the variants in its help.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import DlkitError

if TYPE_CHECKING:
    from torch import nn

    from toolkit.artifact import ArtifactInfo
    from toolkit.runtime import Runner


class VariantSkipped(Exception):
    """This variant cannot run here (the message says why); the sweep goes on without it."""


@dataclass
class Source:
    """The model variants are built from: fp32 weights on the CPU, metadata, where to run."""

    model: nn.Module
    info: ArtifactInfo
    device: str
    threads: int | None
    workdir: Path
    _files: dict[str, Path | VariantSkipped] = field(default_factory=dict)

    def fresh_model(self) -> nn.Module:
        """A private copy: runners move models and change their memory format in place."""
        return copy.deepcopy(self.model)

    def file(self, name: str, make: Callable[[Path], Any]) -> Path:
        """A file derived from the model (an export, a quantized copy), made by `make(path)`
        once per sweep; a failure is remembered and skips every variant that needs it."""
        if name not in self._files:
            path = self.workdir / name
            try:
                make(path)
                self._files[name] = path
            except VariantSkipped as exc:
                self._files[name] = exc
            except DlkitError as exc:
                self._files[name] = VariantSkipped(str(exc))
        made = self._files[name]
        if isinstance(made, VariantSkipped):
            raise made
        return made

    def export(self, fmt: str) -> Path:
        """The model exported by `toolkit.export` ("onnx" or "torchscript"), parity-checked."""
        from toolkit.export import SUFFIXES, export_model

        def make(path: Path) -> None:
            (result,) = export_model(self.model, self.info, path.parent, "model", (fmt,))
            if not result.kept:
                raise VariantSkipped(f"the {fmt} export failed parity: {result.parity.summary()}")

        return self.file(f"model{SUFFIXES[fmt]}", make)

    @property
    def amp(self) -> str:
        """The autocast precision this device runs fastest: fp16 on CUDA, bf16 on the CPU."""
        return "fp16" if self.device == "cuda" else "bf16"


Builder = Callable[[Source, int], "Runner"]


@dataclass(frozen=True)
class Variant:
    build: Builder
    description: str


def eager_runner(source: Source, model: nn.Module | None = None, amp: bool = False) -> Runner:
    """An eager runner on a private copy of the model (or on `model`), optionally under
    autocast with channels_last."""
    from toolkit.runtime import EagerRunner

    return EagerRunner(
        model=model if model is not None else source.fresh_model(),
        info=source.info,
        device=source.device,
        threads=source.threads,
        autocast=source.amp if amp else None,
        channels_last=amp,
    )


def onnx_runner(source: Source, path: Path) -> Runner:
    from toolkit.runtime import OnnxRunner

    return OnnxRunner(path, device=source.device, threads=source.threads)


def _onnx_runs_here(source: Source) -> None:
    """Skip an ONNX variant on CUDA before anything is exported or quantized for it when ONNX
    Runtime has no GPU provider here: building ResNet-18's files takes minutes for nothing."""
    from toolkit.runtime import gpu_providers

    if source.device == "cuda" and not gpu_providers():
        raise VariantSkipped(
            "ONNX Runtime has no CUDA provider here (onnxruntime-gpu runs ONNX on the GPU)"
        )


def _onnx_fp32(source: Source, batch_size: int) -> Runner:
    _onnx_runs_here(source)
    return onnx_runner(source, source.export("onnx"))


def _compiled(source: Source, amp: bool) -> Runner:
    import torch

    # One compiled runner lives at a time; forgetting the previous ones keeps every batch size
    # and variant clear of dynamo's recompile limit (which would fall back to eager silently).
    torch.compiler.reset()
    model = source.fresh_model()
    if source.device == "cuda":
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)  # CUDA graphs
    else:
        # Freezing folds the weights into the graph as constants and lets oneDNN pre-pack them.
        compiled = torch.compile(model, dynamic=False, options={"freezing": True})
    return eager_runner(source, compiled, amp=amp)


def _torchscript(source: Source, batch_size: int) -> Runner:
    from toolkit.runtime import TorchScriptRunner

    return TorchScriptRunner(
        source.export("torchscript"), device=source.device, threads=source.threads
    )


def _calibration(source: Source, count: int = 64):
    """Calibration inputs: the model's own training images where it has them, else seeded
    random inputs (a `--model` with random weights has no data; speed does not care)."""
    import numpy as np

    from toolkit.quantize import calibration_samples

    try:
        return calibration_samples(source.info, count)
    except DlkitError:
        shape = (count, *source.info.preprocessing.input_shape)
        return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def _onnx_quantized(source: Source, mode: str) -> Runner:
    from toolkit.artifact import write_onnx_metadata
    from toolkit.quantize import quantize_dynamic_onnx, quantize_fp16_onnx, quantize_static_onnx

    _onnx_runs_here(source)
    fp32 = source.export("onnx")

    def make(path: Path) -> None:
        if mode == "static":
            details = quantize_static_onnx(fp32, path, _calibration(source))
        elif mode == "dynamic":
            details = quantize_dynamic_onnx(fp32, path)
        else:
            details = quantize_fp16_onnx(fp32, path)
        precision = "fp16" if mode == "fp16" else "int8"
        quantization = {"mode": mode, **details}
        write_onnx_metadata(
            path, source.info.derive(precision=precision, quantization=quantization)
        )

    return onnx_runner(source, source.file(f"model.{mode}.onnx", make))


def _pt2e_int8(source: Source, batch_size: int) -> Runner:
    import torch

    from toolkit.quantize import compile_int8, pt2e_int8

    if source.device != "cpu":
        raise VariantSkipped("PT2E int8 with the x86 inductor quantizer runs on the CPU")
    torch.compiler.reset()
    calibration = _calibration(source)
    converted = pt2e_int8(source.fresh_model(), calibration, batch_size=batch_size)
    example = torch.from_numpy(calibration[:1]).repeat(batch_size, 1, 1, 1)
    return eager_runner(source, compile_int8(converted, example))


VARIANTS: dict[str, Variant] = {
    "eager-fp32": Variant(lambda s, b: eager_runner(s), "eager PyTorch, fp32"),
    "eager-amp-cl": Variant(
        lambda s, b: eager_runner(s, amp=True),
        "eager PyTorch under autocast (fp16 on CUDA, bf16 on CPU), channels_last",
    ),
    "torchscript": Variant(_torchscript, "frozen TorchScript from `dlkit export`, fp32"),
    "compile": Variant(
        lambda s, b: _compiled(s, amp=False),
        "torch.compile fp32 (inductor with freezing on CPU; CUDA graphs on CUDA)",
    ),
    "compile-amp-cl": Variant(
        lambda s, b: _compiled(s, amp=True),
        "torch.compile under autocast (fp16 on CUDA, bf16 on CPU), channels_last",
    ),
    "onnx-fp32": Variant(
        _onnx_fp32, "ONNX Runtime fp32 from `dlkit export`, all graph optimisations"
    ),
    "onnx-int8-dynamic": Variant(
        lambda s, b: _onnx_quantized(s, "dynamic"), "ONNX Runtime, dynamic int8 (`dlkit quantize`)"
    ),
    "onnx-int8-static": Variant(
        lambda s, b: _onnx_quantized(s, "static"),
        "ONNX Runtime, static int8 QDQ, per-channel, calibrated (`dlkit quantize`)",
    ),
    "onnx-fp16": Variant(
        lambda s, b: _onnx_quantized(s, "fp16"), "ONNX Runtime, fp16 weights and activations"
    ),
    "torch-int8-pt2e": Variant(
        _pt2e_int8, "torchao PT2E static int8 (x86 inductor quantizer) under torch.compile"
    ),
}

# What `dlkit bench` runs without --variants. bf16 compile is left out on the CPU: few CPUs
# have native bf16 (AVX-512 BF16, AMX) and compiling it costs as much as fp32.
DEFAULT_VARIANTS = {
    "cpu": (
        "eager-fp32",
        "eager-amp-cl",
        "torchscript",
        "compile",
        "onnx-fp32",
        "onnx-int8-dynamic",
        "onnx-int8-static",
        "torch-int8-pt2e",
    ),
    "cuda": (
        "eager-fp32",
        "eager-amp-cl",
        "torchscript",
        "compile",
        "compile-amp-cl",
        "onnx-fp32",
        "onnx-fp16",
    ),
}
BASELINE = "eager-fp32"


def resolve_variants(names: list[str] | None, device: str) -> list[str]:
    """The names to run: the device's defaults, every registered variant for "all", or the
    given names in order (unknown ones are kept; the sweep skips them with a reason)."""
    if not names:
        return list(DEFAULT_VARIANTS[device])
    if names == ["all"]:
        return list(VARIANTS)
    return list(dict.fromkeys(names))
