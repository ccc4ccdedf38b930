"""Building a variant's runner from an fp32 model.

`build_runner(variant, source, batch_size)` returns a callable from a float32 N×C×H×W numpy
batch to logits (a `Runner`). In-process variants are built here from the `Source`'s model;
file variants come from the artifact store, made and verified once
(`toolkit.variants.verified`), and are opened by their format plugin's runner. A variant that
cannot work here raises `VariantSkipped("why")`; the caller records the reason and carries on.
"""

from __future__ import annotations

import torch
from torch import nn

from toolkit.artifacts.checkpoint import EagerRunner
from toolkit.artifacts.format_plugin import FileVariant, VariantBase
from toolkit.artifacts.registry import plugin as format_plugin
from toolkit.artifacts.runner import Runner
from toolkit.choices import Device
from toolkit.cpu import cpu_features
from toolkit.errors import DlkitError
from toolkit.variants.pt2e import compile_int8, pt2e_int8
from toolkit.variants.registry import COMPILE, EAGER, PT2E, Variant
from toolkit.variants.source import Source
from toolkit.variants.verified import VariantSkipped, verified_artifact


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


def file_runner(
    variant: FileVariant,
    source: Source,
    objective: str | None = None,
    batch_size: int | None = None,
) -> Runner:
    """The stored, verified artifact of a file variant, opened by its format's runner (for
    batches of `batch_size` only, when given: see `FormatPlugin.fixed_batch_options`)."""
    plugin = format_plugin(variant.format)
    why = variant.unavailable(source.device, cpu_features()) or plugin.unavailable(source.device)
    if why:  # before making anything for it
        raise VariantSkipped(why)
    stored = verified_artifact(variant, source)
    options = {"trust": True} if plugin.runs_code else {}  # made by dlkit from this model
    if objective:
        options["objective"] = objective
    if batch_size is not None:
        options |= plugin.fixed_batch_options(source.device, batch_size)
    return plugin.open_runner(stored.path, source.device, threads=source.threads, **options)


def build_runner(variant: VariantBase, source: Source, batch_size: int) -> Runner:
    """The runner of `variant` built from `source`, for batches of `batch_size`."""
    if variant.cuda_only and source.device != Device.CUDA:
        raise VariantSkipped(f"{variant.name} runs on CUDA (fp16 kernels are slow on CPUs)")
    if isinstance(variant, FileVariant):
        return file_runner(variant, source, batch_size=batch_size)
    if not isinstance(variant, Variant):
        raise DlkitError(f"variant {variant.name} is neither built in-process nor a file")
    if variant.build == EAGER:
        return eager_runner(source, variant)
    if variant.build == COMPILE:
        return _compiled(source, variant)
    if variant.build == PT2E:
        return _pt2e_int8(source, variant, batch_size)
    raise DlkitError(f"variant {variant.name} has an unknown build {variant.build!r}")
