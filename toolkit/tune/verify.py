"""The chosen configuration's accuracy, measured through the endpoint before anything is
written: the whole validation split through the served model, against the fp32 checkpoint
(`compare_with_baseline`, the same gate as `dlkit deploy`) and against the artifact run
locally (top-1 agreement, largest logit difference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.artifacts import open_runner
from toolkit.artifacts.isolated import open_model
from toolkit.data import load_split
from toolkit.errors import DlkitError
from toolkit.evaluate import predict_dataset
from toolkit.files import sha256_file
from toolkit.tune.inputs import Candidate
from toolkit.variants.gate import compare_with_baseline, serving_parity


def verify_endpoint(
    url: str,
    candidate: Candidate,
    model: str,
    max_accuracy_drop: float,
    shared_memory: bool = False,
) -> dict[str, Any]:
    """Accuracy of `candidate` served as `model` at `url` (gRPC host:port); DlkitError when
    it loses more than the budget or disagrees with the artifact run locally."""
    info = candidate.info
    val, _ = load_split(info.source, info.preprocessing, "val")
    with open_runner(f"grpc://{url}/{model}", shared_memory=shared_memory) as served:
        logits, labels = predict_dataset(served, val)
    local, _ = predict_dataset(open_model(candidate.artifact), val)  # a file from outside
    baseline, baseline_name = _baseline_logits(candidate, val, local)
    comparison = compare_with_baseline(logits, baseline, labels, max_accuracy_drop)
    max_abs_err = float(np.abs(logits - local).max())
    agreement = float((logits.argmax(1) == local.argmax(1)).mean())
    parity = serving_parity(info.precision, max_abs_err, agreement)
    result = comparison.to_dict() | {
        "baseline": baseline_name,
        "top1_agreement_with_local": agreement,
        "max_abs_err_vs_local": max_abs_err,
        "parity": str(parity),
    }
    if not parity.ok:
        raise DlkitError(f"served through Triton, {candidate.variant}: {parity.reason}")
    if not comparison.passed:
        raise DlkitError(f"served through Triton, {candidate.variant} {comparison.gate.reason}")
    return result


def _baseline_logits(candidate: Candidate, val, local: np.ndarray) -> tuple[np.ndarray, str]:
    """The fp32 checkpoint's logits when the artifact's checkpoint is still there (and is the
    one it was made from); else the artifact's own, and the report says so."""
    info = candidate.info
    checkpoint = Path(info.source_checkpoint) if info.source_checkpoint else None
    if checkpoint and checkpoint.is_file() and sha256_file(checkpoint) == info.source_sha256:
        logits, _ = predict_dataset(open_runner(checkpoint), val)
        return logits, f"fp32 checkpoint {checkpoint}"
    return local, "the artifact run locally (its fp32 checkpoint is not on this machine)"
