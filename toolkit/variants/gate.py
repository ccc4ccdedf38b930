"""Gates, and the one comparison of a variant with its fp32 baseline.

`compare_with_baseline` takes both models' logits on the same labelled images and reports the
accuracy of each, the drop in percentage points with a 95% confidence interval for paired
answers (Tango's score interval: as wide as the number of images leaves it), top-1
agreement, and McNemar's exact test on the images where exactly one of them is right. The
gate fails a variant whose drop exceeds the budget *and* is significantly worse than the
baseline; a drop over budget that the validation set cannot tell from noise passes, with a
note saying so and about how many images would decide it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.choices import Choice, Precision

Z95 = 1.959964
SIGNIFICANCE = 0.05


class GateStatus(Choice):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"
    BASELINE = "baseline"


@dataclass(frozen=True)
class Gate:
    """Whether a variant may go on, and why not. Shown as "passed" or "failed: why"."""

    status: GateStatus = GateStatus.PENDING
    reason: str = ""

    @classmethod
    def passed(cls) -> Gate:
        return cls(GateStatus.PASSED)

    @classmethod
    def failed(cls, reason: str) -> Gate:
        return cls(GateStatus.FAILED, reason)

    @property
    def ok(self) -> bool:
        return self.status == GateStatus.PASSED

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}" if self.reason else str(self.status)

    @classmethod
    def parse(cls, text: str) -> Gate:
        """The gate `str(gate)` came from (reports store gates as text)."""
        status, _, reason = text.partition(": ")
        return cls(GateStatus(status), reason)


@dataclass(frozen=True)
class AccuracyComparison:
    """A variant against its fp32 baseline on the same images (accuracies are fractions,
    drops are percentage points)."""

    accuracy: float
    baseline_accuracy: float
    accuracy_drop_points: float
    drop_ci_points: tuple[float, float]
    top1_agreement: float
    samples: int
    baseline_only_right: int  # images the baseline gets right and the variant wrong
    variant_only_right: int
    mcnemar_p: float  # one-sided: the variant is worse
    max_accuracy_drop: float
    gate: Gate
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.gate.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "accuracy_drop_points": self.accuracy_drop_points,
            "drop_ci_points": list(self.drop_ci_points),
            "top1_agreement": self.top1_agreement,
            "samples": self.samples,
            "baseline_only_right": self.baseline_only_right,
            "variant_only_right": self.variant_only_right,
            "mcnemar_p": self.mcnemar_p,
            "max_accuracy_drop": self.max_accuracy_drop,
            "gate": str(self.gate),
            "note": self.note,
        }


SERVED_FP32_ATOL = 1e-3
SERVED_MIN_AGREEMENT = 0.98


def serving_parity(precision: str, max_abs_err: float, top1_agreement: float) -> Gate:
    """A served model against its own file run locally. fp32 must match to rounding;
    dynamic int8 scales activations per batch, so a server that batches differently gives
    slightly other logits: there (and for other precisions) only the classes must agree."""
    exact = precision == Precision.FP32
    if top1_agreement < (1.0 if exact else SERVED_MIN_AGREEMENT) or (
        exact and max_abs_err > SERVED_FP32_ATOL
    ):
        return Gate.failed(
            f"the served model disagrees with the local one: {max_abs_err:.3g} max abs error, "
            f"top-1 agreement {top1_agreement:.3f}"
        )
    return Gate.passed()


def mcnemar_worse_p(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that the variant is worse: the chance of at least `b`
    of the `b + c` disagreeing images going the baseline's way if both were equally good."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n)


def paired_drop_interval(b: int, c: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% interval (fractions) for the drop p_b - p_c in paired answers on `n` images, `b`
    right only for the baseline and `c` only for the variant: Tango's score interval (Tango
    1998, Stat Med 17:891), the values of the drop that its score test does not reject.

    Why this one: the Wald interval (b - c)/n ± z·sd collapses to 0 to 0 when no image
    disagrees, claiming certainty on 36 images as on 36,000. Tango's interval depends only
    on the discordant counts and n (as the drop does), never has zero width (no
    disagreement on n images gives ±z²/(n + z²): ±9.6 points on 36, ±1.1 on 360), stays
    within -1 to 1, and keeps close to its nominal coverage with few discordant pairs where
    Wald intervals fall short (Newcombe 1998, Stat Med 17:2635; Fagerland et al. 2014).
    """
    if n == 0:
        return -1.0, 1.0

    def score(delta: float) -> float:
        # The constrained maximum-likelihood p_c under drop = delta, then the score statistic.
        quad_b = -b - c + (2 * n - b + c) * delta
        quad_c = -c * delta * (1 - delta)
        p_c = (math.sqrt(max(quad_b**2 - 8 * n * quad_c, 0.0)) - quad_b) / (4 * n)
        spread = n * (2 * p_c + delta * (1 - delta))
        return (b - c - n * delta) / math.sqrt(spread) if spread > 0 else math.inf

    def solve(target: float, low: float, high: float) -> float:
        # score() decreases in delta: bisect for score(delta) == target.
        for _ in range(100):
            middle = (low + high) / 2
            low, high = (middle, high) if score(middle) > target else (low, middle)
        return (low + high) / 2

    estimate = (b - c) / n
    lower = -1.0 if estimate <= -1 else solve(z, -1.0, estimate)
    upper = 1.0 if estimate >= 1 else solve(-z, estimate, 1.0)
    return lower, upper


def images_to_resolve(budget_points: float, discordant_rate: float) -> int:
    """About how many images make the 95% interval of a paired drop narrower than the budget."""
    rate = max(discordant_rate, 0.01)
    return math.ceil(Z95**2 * rate / (max(budget_points, 0.01) / 100) ** 2)


def compare_with_baseline(
    logits: np.ndarray, baseline_logits: np.ndarray, labels: np.ndarray, max_accuracy_drop: float
) -> AccuracyComparison:
    """Compare a variant's answers with the baseline's on the same labelled images and decide
    its gate against `max_accuracy_drop` (percentage points)."""
    n = len(labels)
    right = logits.argmax(1) == labels
    base_right = baseline_logits.argmax(1) == labels
    b = int((base_right & ~right).sum())
    c = int((right & ~base_right).sum())
    drop = (b - c) / n * 100
    low, high = (100 * x for x in paired_drop_interval(b, c, n))
    p = mcnemar_worse_p(b, c)
    note = ""
    # The interval straddles the budget. Without a single disagreement the interval says it
    # all (a parity-exact fp32 export would otherwise carry this note on every small set).
    if low <= max_accuracy_drop < high and b + c > 0:
        note = (
            f"{n} validation images cannot resolve a {max_accuracy_drop:g}-point budget (one "
            f"image is {100 / n:.2f} points; 95% interval {low:.2f} to {high:.2f}); about "
            f"{images_to_resolve(max_accuracy_drop, (b + c) / n)} would"
        )
    if drop <= max_accuracy_drop:
        gate = Gate.passed()
    elif p < SIGNIFICANCE:
        gate = Gate.failed(
            f"loses {drop:.2f} points (95% interval {low:.2f} to {high:.2f} on {n} images; "
            f"McNemar p={p:.3g}; budget {max_accuracy_drop:g})"
        )
    else:
        gate = Gate.passed()
        note = (
            f"the drop of {drop:.2f} points is over the {max_accuracy_drop:g}-point budget but "
            f"not significant (McNemar p={p:.2f} on {b + c} disagreeing images)"
            + (f"; {note}" if note else "")
        )
    return AccuracyComparison(
        accuracy=float(right.mean()),
        baseline_accuracy=float(base_right.mean()),
        accuracy_drop_points=round(drop, 6),
        drop_ci_points=(round(low, 6), round(high, 6)),
        top1_agreement=float((logits.argmax(1) == baseline_logits.argmax(1)).mean()),
        samples=n,
        baseline_only_right=b,
        variant_only_right=c,
        mcnemar_p=p,
        max_accuracy_drop=max_accuracy_drop,
        gate=gate,
        note=note,
    )
