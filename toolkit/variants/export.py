"""Export to every exportable format, each proved against eager PyTorch before it is kept.

A format's export is the fp32 variant its plugin offers, made through its lineage (OpenVINO's
IR from an fp32 ONNX export, made on the way in a temporary folder unless ONNX is exported too).
Each artifact is written to a temporary folder beside its target, opened through its runner,
compared with the eager model on real samples (the checkpoint's validation images when they
are available) at batch sizes 1 and 7, and its files renamed into place only if every output
element agrees.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit import __version__
from toolkit.artifacts import open_runner, plugin, plugins
from toolkit.artifacts.checkpoint import EagerRunner, check_outputs, load_model
from toolkit.artifacts.format_plugin import FileVariant
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.choices import Format, Precision
from toolkit.errors import DlkitError, os_error_message
from toolkit.files import sha256_file, writable_folder
from toolkit.variants.parity import (
    FP32_ATOL,
    FP32_RTOL,
    PARITY_BATCH_SIZES,
    ParityReport,
    parity_batches,
    verify_parity,
)
from toolkit.variants.registry import fp32_variant, lineage

EXPORT_FORMATS = (Format.ONNX, Format.TORCHSCRIPT)  # what `dlkit export` writes by default


@dataclass
class ExportResult:
    """One format's outcome: where it went, its parity, and whether it was kept."""

    format: str
    path: str
    parity: ParityReport
    kept: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": self.path,
            "kept": self.kept,
            "parity": self.parity.to_dict(),
            **self.details,
        }


@dataclass
class ExportContext:
    """What an export's `make` functions get (a `format_plugin.BuildContext`)."""

    model: nn.Module
    batch: np.ndarray
    export_options: dict[str, dict[str, Any]]
    calibrated_on: str = ""

    def example(self) -> torch.Tensor:
        return torch.from_numpy(self.batch)

    def options(self, fmt: str) -> dict[str, Any]:
        return self.export_options.get(fmt, {})

    def calibration(self) -> np.ndarray:
        raise DlkitError("an fp32 export needs no calibration")


@dataclass
class ParityCheck:
    """What an export is checked against: the eager model on these batches."""

    reference: EagerRunner
    batches: list[np.ndarray]
    atol: float
    rtol: float
    kind: str


def exportable_formats() -> list[str]:
    return [p.name for p in plugins() if p.exportable]


def artifact_path(out_dir: str | os.PathLike, stem: str, fmt: str) -> Path:
    """`out_dir/<stem>.onnx`, `out_dir/<stem>.torchscript.pt`, `<stem>.openvino.xml`, …"""
    return Path(out_dir) / f"{stem}{plugin(fmt).suffix}"


def export_model(
    model: nn.Module,
    info: ArtifactInfo,
    out_dir: str | os.PathLike,
    stem: str,
    formats: tuple[str, ...] = EXPORT_FORMATS,
    opset: int | None = None,
    static_batch: int | None = None,
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
    force: bool = False,
) -> list[ExportResult]:
    """Export `model` to each format, verify parity, keep only what passes."""
    allowed = exportable_formats()
    if not formats or any(f not in allowed for f in formats):
        raise DlkitError(f"choose formats from {', '.join(allowed)}, got {list(formats)}")
    check_outputs(model, info, info.model.name)
    targets = {f: artifact_path(out_dir, stem, f) for f in dict.fromkeys(formats)}
    existing = [] if force else _existing(targets)
    model = model.eval().float()
    sizes = (static_batch,) if static_batch else PARITY_BATCH_SIZES
    batches, kind = parity_batches(info, sizes)
    example = batches[-1][:2] if not static_batch else batches[0]
    if len(example) < 2 and not static_batch:
        example = np.repeat(example, 2, axis=0)  # a batch of at least 2 keeps it dynamic
    onnx_options = {"static_batch": static_batch} | ({"opset": opset} if opset else {})
    context = ExportContext(model, example, {Format.ONNX: onnx_options})
    check = ParityCheck(EagerRunner(model=model, info=info), batches, atol, rtol, kind)
    info = info.derive(static_batch=static_batch, precision=Precision.FP32)
    results = [_recheck(fmt, targets[fmt], check) for fmt in existing]
    # variant -> a file of it: a kept export, or a parent made on the way
    made = {fp32_variant(fmt).name: targets[fmt] for fmt in existing}
    with tempfile.TemporaryDirectory(prefix="dlkit-export-") as work:
        todo = [f for f in targets if f not in existing]
        for fmt in sorted(todo, key=lambda f: len(lineage(fp32_variant(f).name))):
            *parents, variant = lineage(fp32_variant(fmt).name)
            for parent in parents:
                if parent.name not in made:
                    made[parent.name] = _make(parent, made, info, context, Path(work))[0]
            result = _export_one(variant, targets[fmt], made, info, context, check)
            if result.kept:
                made[variant.name] = targets[fmt]
            results.append(result)
    order = list(targets)
    return sorted(results, key=lambda r: order.index(r.format))


def _existing(targets: dict[str, Path]) -> list[str]:
    """The formats whose file exists already: kept (after a parity check) when others are
    missing, so a second `dlkit export` writes just those; refused when all exist."""
    existing = [fmt for fmt, target in targets.items() if target.exists()]
    if existing and len(existing) == len(targets):
        names = " and ".join(str(targets[fmt]) for fmt in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        raise DlkitError(f"{names} {verb}; pass --force to replace")
    return existing


def _recheck(fmt: str, target: Path, check: ParityCheck) -> ExportResult:
    """An existing file, checked against the model being exported: kept if it matches."""
    report = verify_parity(
        check.reference, open_runner(target), check.batches, check.atol, check.rtol, check.kind
    )
    if not report.passed:
        raise DlkitError(
            f"{target} exists and does not match this model ({report.summary()}): it was "
            "exported from another checkpoint? pass --force to replace it"
        )
    size = sum(p.stat().st_size for p in plugin(fmt).files(target))
    return ExportResult(
        fmt, str(target), report, kept=True, details={"existing": True, "size_bytes": size}
    )


def _make(variant: FileVariant, made, info: ArtifactInfo, context, folder: Path):
    """Write `variant` (its parent already in `made`) into `folder`; its main file and what
    its make reported (the opset, the TorchScript method, ...)."""
    target = folder / variant.name / f"model{plugin(variant.format).suffix}"
    target.parent.mkdir(parents=True)
    parent = made[variant.parent] if variant.parent else None
    return target, variant.make(target, parent, info.derive(format=variant.format), context)


def _export_one(variant: FileVariant, target: Path, made, info, context, check) -> ExportResult:
    """Make `variant` in a folder beside `target`, check it against the eager model, and move
    its files into place only if it passes (companions first, so a main file in place always
    has them). The staging folder is removed either way."""
    fmt = plugin(variant.format)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        writable_folder(target.parent)
        staging.mkdir()
        staged, details = _make(variant, made, info, context, staging)
        candidate = open_runner(staged, trust=True)  # made just now from this model
        report = verify_parity(
            check.reference, candidate, check.batches, check.atol, check.rtol, check.kind
        )
        if report.passed:
            pairs = list(zip(fmt.files(staged), fmt.files(target), strict=True))
            for source, destination in reversed(pairs):
                os.replace(source, destination)
            details["size_bytes"] = sum(p.stat().st_size for p in fmt.files(target))
        return ExportResult(variant.format, str(target), report, report.passed, details)
    except OSError as exc:  # a full disk while making or moving it: named as the target
        raise DlkitError(os_error_message(exc, writing=target)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    formats: tuple[str, ...] = EXPORT_FORMATS,
    **options: Any,
) -> list[ExportResult]:
    """Export a dlkit checkpoint; artifacts go beside it (or to `out_dir`) as
    `<stem>.onnx`, `<stem>.torchscript.pt`, `<stem>.openvino.xml`, carrying its metadata and
    SHA-256."""
    model, info = load_model(checkpoint)
    info = info.derive(
        source_checkpoint=str(Path(checkpoint).resolve()),
        source_sha256=sha256_file(checkpoint),
        dlkit_version=__version__,
    )
    out_dir = Path(out_dir) if out_dir else Path(checkpoint).parent
    return export_model(model, info, out_dir, Path(checkpoint).stem, formats, **options)
