"""The parity gate: how closely a converted model's logits follow the original's."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.artifacts.runner import Runner
from toolkit.data import load_split
from toolkit.errors import DlkitError
from toolkit.log import logger

PARITY_BATCH_SIZES = (1, 7)
FP32_ATOL, FP32_RTOL = 1e-4, 1e-3


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
    """Element-wise and per-sample agreement of two N×C logit arrays. A NaN anywhere in the
    candidate fails every element it touches."""
    ref, out = reference.astype(np.float64), candidate.astype(np.float64)
    abs_err = np.abs(out - ref)
    rel_err = abs_err / np.maximum(np.abs(ref), 1e-12)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = (ref * out).sum(1) / np.maximum(norms, 1e-12)
    within = (abs_err <= atol) | (rel_err <= rtol)
    return {
        "abs": abs_err,
        "failed": int((~within).sum()),
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
    inputs when that data is not on this machine (with a warning naming what is missing).
    Returns the batches and which it used."""
    needed = sum(batch_sizes)
    try:
        dataset, _ = load_split(info.source, info.preprocessing, "val")
        if len(dataset) < needed:
            raise DlkitError(f"only {len(dataset)} validation images, {needed} needed")
        pool = np.stack([dataset[i][0].numpy() for i in range(needed)])
        kind = "validation"
    except DlkitError as exc:
        if info.source.data or info.source.dataset:
            logger.warning(
                "warning: the model's validation data (%s) is not usable here (%s); the parity "
                "check uses random inputs instead",
                info.source.describe(),
                exc,
            )
        rng = np.random.default_rng(seed)
        pool = rng.standard_normal((needed, *info.preprocessing.input_shape)).astype(np.float32)
        kind = "random"
    bounds = np.cumsum([0, *batch_sizes])
    return [pool[a:b] for a, b in itertools.pairwise(bounds)], kind
