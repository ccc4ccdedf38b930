"""TorchScript and ONNX export, each proved against eager PyTorch before it is kept.

An artifact is written to a temporary file beside its target, opened through its runner,
compared with the eager model on real samples (the checkpoint's validation images when they are
available) at batch sizes 1 and 7, and renamed into place only if every output element agrees.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit import __version__
from toolkit.artifact import (
    TORCHSCRIPT_EXTRA_FILE,
    ArtifactInfo,
    jit_deprecation_silenced,
    write_onnx_metadata,
)
from toolkit.errors import DlkitError
from toolkit.files import atomic_path, sha256_file
from toolkit.runtime import EagerRunner, Runner, open_runner

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET = 18
PARITY_BATCH_SIZES = (1, 7)
FP32_ATOL, FP32_RTOL = 1e-4, 1e-3


# ------------------------------------------------------------------------------------ parity


@dataclass
class ParityReport:
    """How closely a candidate's logits follow the reference's over all compared batches.

    An element fails only when it is off by more than `atol` absolutely *and* more than `rtol`
    relative to the reference; `cosine` is the lowest per-sample cosine similarity.
    """

    max_abs_err: float
    max_rel_err: float
    mean_abs_err: float
    cosine: float
    top1_agreement: float
    failed_elements: int
    num_elements: int
    batch_sizes: list[int]
    atol: float
    rtol: float
    samples: str = "validation"

    @property
    def passed(self) -> bool:
        return self.failed_elements == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}

    def summary(self) -> str:
        return (
            f"{self.failed_elements} of {self.num_elements} logits differ by more than "
            f"atol {self.atol:g} and rtol {self.rtol:g} (max abs err {self.max_abs_err:.3g}, "
            f"max rel err {self.max_rel_err:.3g}, cosine {self.cosine:.6f}, top-1 agreement "
            f"{self.top1_agreement:.3f})"
        )


def compare_logits(
    reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float
) -> dict[str, Any]:
    """Element-wise and per-sample agreement of two N×C logit arrays."""
    ref, out = reference.astype(np.float64), candidate.astype(np.float64)
    abs_err = np.abs(out - ref)
    rel_err = abs_err / np.maximum(np.abs(ref), 1e-12)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = (ref * out).sum(1) / np.maximum(norms, 1e-12)
    return {
        "abs": abs_err,
        "failed": int(((abs_err > atol) & (rel_err > rtol)).sum()),
        "max_rel": float(rel_err.max()),
        "cosine": float(cosine.min()),
        "agree": int((ref.argmax(1) == out.argmax(1)).sum()),
    }


def verify_parity(
    reference: Runner,
    candidate: Runner,
    batches: list[np.ndarray],
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
    samples: str = "validation",
) -> ParityReport:
    """Run both runners on every batch and report how far the candidate drifts."""
    parts = [compare_logits(reference(b), candidate(b), atol, rtol) for b in batches if len(b) > 0]
    abs_all = np.concatenate([p["abs"].ravel() for p in parts])
    rows = sum(len(p["abs"]) for p in parts)
    return ParityReport(
        max_abs_err=float(abs_all.max()),
        max_rel_err=max(p["max_rel"] for p in parts),
        mean_abs_err=float(abs_all.mean()),
        cosine=min(p["cosine"] for p in parts),
        top1_agreement=sum(p["agree"] for p in parts) / rows,
        failed_elements=sum(p["failed"] for p in parts),
        num_elements=int(abs_all.size),
        batch_sizes=[len(b) for b in batches],
        atol=atol,
        rtol=rtol,
        samples=samples,
    )


def parity_batches(
    info: ArtifactInfo, batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES, seed: int = 0
) -> tuple[list[np.ndarray], str]:
    """Batches of the given sizes from the model's own validation images, or seeded random
    inputs when that data is not on this machine. Returns the batches and which it used."""
    from toolkit.data import load_split

    needed = sum(batch_sizes)
    try:
        dataset, _ = load_split(info.source, info.preprocessing, "val")
        if len(dataset) < needed:
            raise DlkitError("too few validation images")
        pool = np.stack([dataset[i][0].numpy() for i in range(needed)])
        kind = "validation"
    except DlkitError:
        rng = np.random.default_rng(seed)
        pool = rng.standard_normal((needed, *info.preprocessing.input_shape)).astype(np.float32)
        kind = "random"
    bounds = np.cumsum([0, *batch_sizes])
    return [pool[a:b] for a, b in itertools.pairwise(bounds)], kind


# ---------------------------------------------------------------------------------- exporters


def export_onnx(
    model: nn.Module,
    info: ArtifactInfo,
    path: str | os.PathLike,
    example: torch.Tensor,
    opset: int = DEFAULT_OPSET,
    static_batch: int | None = None,
) -> None:
    """Export with torch's current (dynamo) exporter to one self-contained file with input
    `input` and output `logits`, the batch dimension dynamic unless `static_batch`."""
    import onnx

    dynamic = None if static_batch else ({0: torch.export.Dim("batch", min=1)},)
    try:
        # The exporter reports progress on stdout, which belongs to --json.
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                external_data=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=dynamic,
                verbose=False,
            )
    except Exception as exc:
        raise DlkitError(
            f"ONNX export of {info.model.name} failed: {_failure(exc)}. "
            "The TorchScript export (--torchscript) may still work."
        ) from exc
    write_onnx_metadata(path, info)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise DlkitError(f"the exported ONNX model is invalid: {_failure(exc)}") from exc


def export_torchscript(
    model: nn.Module, info: ArtifactInfo, path: str | os.PathLike, example: torch.Tensor
) -> str:
    """Trace in eval mode and freeze; script instead when tracing warns that the trace may
    not generalise (data-dependent control flow). Returns "trace" or "script"."""
    method = "trace"
    with jit_deprecation_silenced(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            module = torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:
            module, method = None, f"trace failed ({_failure(exc)})"
        if module is None or any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
            try:
                module, method = torch.jit.script(model), "script"
            except Exception as exc:
                if module is None:
                    raise DlkitError(
                        f"TorchScript export of {info.model.name} failed: tracing and scripting "
                        f"both failed ({_failure(exc)}). The ONNX export (--onnx) may still work."
                    ) from exc
        frozen = torch.jit.freeze(module.eval())
        extra = {TORCHSCRIPT_EXTRA_FILE: json.dumps(info.to_dict())}
        torch.jit.save(frozen, str(path), _extra_files=extra)
    return method


def _failure(exc: BaseException) -> str:
    """The most telling line of an exporter's error (they run to pages): the root exception of
    torch.onnx's "Exception summary" (it names the op), else the first line."""
    text = str(exc)
    summary = text.partition("## Exception summary")[2]
    for line in summary.splitlines():
        if line.startswith("<class"):
            return line.split(">: ", 1)[-1][:400]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:400]


# ------------------------------------------------------------------------------ the pipeline


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


class _ParityFailed(Exception):
    def __init__(self, report: ParityReport):
        self.report = report


def export_model(
    model: nn.Module,
    info: ArtifactInfo,
    out_dir: str | os.PathLike,
    stem: str,
    formats: tuple[str, ...] = FORMATS,
    opset: int = DEFAULT_OPSET,
    static_batch: int | None = None,
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
    force: bool = False,
) -> list[ExportResult]:
    """Export `model` to each format, verify parity, keep only what passes."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise DlkitError(f"choose formats from {FORMATS}, got {sorted(unknown) or 'none'}")
    targets = {fmt: Path(out_dir) / f"{stem}{SUFFIXES[fmt]}" for fmt in formats}
    for target in targets.values():
        if target.exists() and not force:
            raise DlkitError(f"{target} exists; pass --force to replace it")
    model = model.eval().float()
    sizes = (static_batch,) if static_batch else PARITY_BATCH_SIZES
    batches, kind = parity_batches(info, sizes)
    example = torch.from_numpy(batches[-1][:2] if not static_batch else batches[0])
    if len(example) < 2 and not static_batch:
        example = example.repeat(2, 1, 1, 1)  # a batch of at least 2 keeps the dimension dynamic
    reference = EagerRunner(model=model, info=info)
    results = []
    for fmt, target in targets.items():
        artifact_info = info.derive(format=fmt, static_batch=static_batch)
        details: dict[str, Any] = {}
        try:
            with atomic_path(target) as tmp:
                if fmt == "onnx":
                    export_onnx(model, artifact_info, tmp, example, opset, static_batch)
                    details["opset"] = opset
                else:
                    details["method"] = export_torchscript(model, artifact_info, tmp, example)
                report = verify_parity(reference, open_runner(tmp), batches, atol, rtol, kind)
                if not report.passed:
                    raise _ParityFailed(report)
            details["size_bytes"] = target.stat().st_size
            results.append(ExportResult(fmt, str(target), report, kept=True, details=details))
        except _ParityFailed as failed:
            results.append(
                ExportResult(fmt, str(target), failed.report, kept=False, details=details)
            )
    return results


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    formats: tuple[str, ...] = FORMATS,
    **options: Any,
) -> list[ExportResult]:
    """Export a dlkit checkpoint; artifacts go beside it (or to `out_dir`) as
    `<stem>.onnx` and `<stem>.torchscript.pt`, carrying its metadata and SHA-256."""
    from toolkit.training.checkpoint import load_model

    model, info = load_model(checkpoint)
    info = info.derive(
        source_checkpoint=str(checkpoint),
        source_sha256=sha256_file(checkpoint),
        dlkit_version=__version__,
    )
    out_dir = Path(out_dir) if out_dir else Path(checkpoint).parent
    return export_model(model, info, out_dir, Path(checkpoint).stem, formats, **options)
