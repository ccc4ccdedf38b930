"""Export to every exportable format, each proved against eager PyTorch before it is kept.

An artifact is written to a temporary file beside its target by its format's Handler, opened
through its runner, compared with the eager model on real samples (the checkpoint's validation
images when they are available) at batch sizes 1 and 7, and renamed into place only if every
output element agrees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit import __version__
from toolkit.artifacts import handler, open_runner
from toolkit.artifacts.checkpoint import EagerRunner, check_outputs, load_model
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.choices import Format
from toolkit.errors import DlkitError
from toolkit.files import atomic_path, sha256_file
from toolkit.variants.parity import (
    FP32_ATOL,
    FP32_RTOL,
    PARITY_BATCH_SIZES,
    ParityReport,
    parity_batches,
    verify_parity,
)

EXPORT_FORMATS = (Format.ONNX, Format.TORCHSCRIPT)


@dataclass
class ExportResult:
    """One format's outcome: where it went, its parity, and whether it was kept."""

    format: Format
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


class _ParityFailed(Exception):
    def __init__(self, report: ParityReport):
        self.report = report


def artifact_path(out_dir: str | os.PathLike, stem: str, fmt: Format) -> Path:
    """`out_dir/<stem>.onnx`, `out_dir/<stem>.torchscript.pt`, …"""
    return Path(out_dir) / f"{stem}{handler(fmt).suffix}"


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
    if not formats or any(f not in EXPORT_FORMATS for f in formats):
        raise DlkitError(f"choose formats from {', '.join(EXPORT_FORMATS)}, got {list(formats)}")
    check_outputs(model, info, info.model.name)
    targets = {Format(f): artifact_path(out_dir, stem, Format(f)) for f in formats}
    existing = [] if force else _existing(targets)
    model = model.eval().float()
    sizes = (static_batch,) if static_batch else PARITY_BATCH_SIZES
    batches, kind = parity_batches(info, sizes)
    example = torch.from_numpy(batches[-1][:2] if not static_batch else batches[0])
    if len(example) < 2 and not static_batch:
        example = example.repeat(2, 1, 1, 1)  # a batch of at least 2 keeps the dimension dynamic
    reference = EagerRunner(model=model, info=info)
    results = [
        _recheck(fmt, targets[fmt], reference, batches, atol, rtol, kind) for fmt in existing
    ]
    for fmt, target in targets.items():
        if fmt in existing:
            continue
        artifact_info = info.derive(format=fmt, static_batch=static_batch)
        options = {"static_batch": static_batch} if fmt == Format.ONNX else {}
        if fmt == Format.ONNX and opset is not None:
            options["opset"] = opset
        details: dict[str, Any] = {}
        try:
            with atomic_path(target) as tmp:
                details |= handler(fmt).export(model, artifact_info, tmp, example, **options)
                candidate = open_runner(tmp, trust=True)  # made just now from this model
                report = verify_parity(reference, candidate, batches, atol, rtol, kind)
                if not report.passed:
                    raise _ParityFailed(report)
            details["size_bytes"] = target.stat().st_size
            results.append(ExportResult(fmt, str(target), report, kept=True, details=details))
        except _ParityFailed as failed:
            results.append(
                ExportResult(fmt, str(target), failed.report, kept=False, details=details)
            )
    return results


def _existing(targets: dict[Format, Path]) -> list[Format]:
    """The formats whose file exists already: kept (after a parity check) when others are
    missing, so a second `dlkit export` writes just those; refused when all exist."""
    existing = [fmt for fmt, target in targets.items() if target.exists()]
    if existing and len(existing) == len(targets):
        names = " and ".join(str(targets[fmt]) for fmt in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        raise DlkitError(f"{names} {verb}; pass --force to replace")
    return existing


def _recheck(fmt: Format, target: Path, reference, batches, atol, rtol, kind) -> ExportResult:
    """An existing file, checked against the model being exported: kept if it matches."""
    report = verify_parity(reference, open_runner(target), batches, atol, rtol, kind)
    if not report.passed:
        raise DlkitError(
            f"{target} exists and does not match this model ({report.summary()}): it was "
            "exported from another checkpoint? pass --force to replace it"
        )
    details = {"existing": True, "size_bytes": target.stat().st_size}
    return ExportResult(fmt, str(target), report, kept=True, details=details)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    formats: tuple[str, ...] = EXPORT_FORMATS,
    **options: Any,
) -> list[ExportResult]:
    """Export a dlkit checkpoint; artifacts go beside it (or to `out_dir`) as
    `<stem>.onnx` and `<stem>.torchscript.pt`, carrying its metadata and SHA-256."""
    model, info = load_model(checkpoint)
    info = info.derive(
        source_checkpoint=str(Path(checkpoint).resolve()),
        source_sha256=sha256_file(checkpoint),
        dlkit_version=__version__,
    )
    out_dir = Path(out_dir) if out_dir else Path(checkpoint).parent
    return export_model(model, info, out_dir, Path(checkpoint).stem, formats, **options)
