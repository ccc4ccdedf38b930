"""Building a variant's runner from an fp32 model.

`build_runner(variant, source, batch_size)` returns a callable from a float32 N×C×H×W numpy
batch to logits (a `Runner`). The `Source` holds the fp32 model, its metadata and the device,
and makes the files variants need (exports, quantized copies) once per sweep, through the same
functions `dlkit export` and `dlkit quantize` use. A variant that cannot work here raises
`VariantSkipped("why")`; the caller records the reason and carries on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit.artifacts import handler
from toolkit.artifacts.checkpoint import EagerRunner
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.artifacts.onnx import write_info
from toolkit.artifacts.runner import Runner
from toolkit.choices import Device, Format
from toolkit.errors import DlkitError
from toolkit.variants.export import artifact_path, export_model
from toolkit.variants.pt2e import compile_int8, pt2e_int8
from toolkit.variants.quantize import calibration_samples, quantize_onnx, quantized_info
from toolkit.variants.registry import COMPILE, EAGER, FILE, PT2E, Variant


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
        """A file derived from the model, made by `make(path)` once per sweep; a failure is
        remembered and skips every variant that needs it."""
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

    def export(self, fmt: Format) -> Path:
        """The model exported by `toolkit.variants.export` to `fmt`, parity-checked."""

        def make(path: Path) -> None:
            (result,) = export_model(self.model, self.info, path.parent, "model", (fmt,))
            if not result.kept:
                raise VariantSkipped(f"the {fmt} export failed parity: {result.parity.summary()}")

        return self.file(artifact_path(".", "model", fmt).name, make)

    def artifact(self, variant: Variant) -> Path:
        """The file a file variant runs: its format's fp32 export, quantized if it says so."""
        fp32 = self.export(variant.format)
        if variant.quantize is None:
            return fp32

        def make(path: Path) -> None:
            details = quantize_onnx(fp32, path, variant.quantize, self.calibration())
            write_info(path, quantized_info(self.info, fp32, variant.quantize, details))

        return self.file(f"{variant.name}.onnx", make)

    def calibration(self, count: int = 64) -> np.ndarray:
        """Calibration inputs: the model's own training images where it has them, else seeded
        random inputs (a `--model` with random weights has no data; speed does not care)."""
        try:
            return calibration_samples(self.info, count)
        except DlkitError:
            shape = (count, *self.info.preprocessing.input_shape)
            return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def eager_runner(source: Source, variant: Variant, model: nn.Module | None = None) -> Runner:
    """An eager runner on a private copy of the model (or on `model`): under autocast for the
    amp variants, cast to fp16 for the fp16 ones, channels_last where the variant says."""
    return EagerRunner(
        model=model if model is not None else source.fresh_model(),
        info=source.info,
        device=source.device,
        threads=source.threads,
        autocast=str(variant.precision_on(source.device)) if variant.autocast else None,
        channels_last=variant.channels_last,
        cast=str(variant.cast) if variant.cast else None,
    )


def _compiled(source: Source, variant: Variant) -> Runner:
    """Compiled at its first call. Callers reset dynamo (`torch.compiler.reset`) between batch
    sizes, so its recompile limit (past which it falls back to eager silently) is never hit."""
    model = source.fresh_model()
    if variant.cast:  # cast before compiling, so the graph is built for fp16 weights
        model = model.to(getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[variant.cast]))
    if source.device == Device.CUDA:
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)  # CUDA graphs
    else:
        # Freezing folds the weights into the graph as constants and lets oneDNN pre-pack them.
        compiled = torch.compile(model, dynamic=False, options={"freezing": True})
    return eager_runner(source, variant, compiled)


def _pt2e_int8(source: Source, variant: Variant, batch_size: int) -> Runner:
    if source.device != Device.CPU:
        raise VariantSkipped("PT2E int8 with the x86 inductor quantizer runs on the CPU")
    calibration = source.calibration()
    converted = pt2e_int8(source.fresh_model(), calibration, batch_size=batch_size)
    example = torch.from_numpy(calibration[:1]).repeat(batch_size, 1, 1, 1)
    return eager_runner(source, variant, compile_int8(converted, example))


def build_runner(variant: Variant, source: Source, batch_size: int) -> Runner:
    """The runner of `variant` built from `source`, for batches of `batch_size`."""
    if variant.cuda_only and source.device != Device.CUDA:
        raise VariantSkipped(f"{variant.name} runs on CUDA (fp16 kernels are slow on CPUs)")
    if variant.build == EAGER:
        return eager_runner(source, variant)
    if variant.build == COMPILE:
        return _compiled(source, variant)
    if variant.build == PT2E:
        return _pt2e_int8(source, variant, batch_size)
    if variant.build == FILE:
        runtime = handler(variant.format)
        why = runtime.unavailable(source.device) if hasattr(runtime, "unavailable") else ""
        if why:  # before exporting or quantizing anything for it
            raise VariantSkipped(why)
        path = source.artifact(variant)
        return runtime.open_runner(path, device=source.device, threads=source.threads)
    raise DlkitError(f"variant {variant.name} has an unknown build {variant.build!r}")
