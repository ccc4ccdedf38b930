"""What the deploy report says of each variant, and how one is selected."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.artifacts.format_plugin import VariantBase
from toolkit.choices import Objective
from toolkit.errors import DlkitError
from toolkit.variants.gate import Gate, GateStatus

# Within this fraction of the best figure, variants count as tied and the simpler one wins:
# benchmark noise on a shared machine is about this size.
TIE_TOLERANCE = 0.05


@dataclass
class VariantReport:
    """One row of the deploy report. `size_bytes` is the file; `weights_bytes` the model's
    parameters alone (a checkpoint also holds the optimizer state), so sizes compare."""

    name: str
    format: str
    precision: str
    simplicity: int
    path: str | None = None
    servable: bool = True
    accuracy: float | None = None
    accuracy_drop_points: float | None = None
    drop_ci_points: list[float] | None = None
    top1_agreement: float | None = None
    samples: int | None = None  # validation images the accuracy figures rest on
    size_bytes: int | None = None
    weights_bytes: int | None = None
    gate: Gate = field(default_factory=Gate)
    verified: bool = False  # passed parity and accuracy (whatever the benchmark said)
    note: str = ""
    latency_ms: dict[str, float] | None = None  # p50/p99… at the smallest batch size
    throughput: float | None = None  # samples/s at the largest batch size
    stable: bool | None = None  # did both figures settle?
    benchmark: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False

    @classmethod
    def of(cls, variant: VariantBase, device: str) -> VariantReport:
        return cls(
            variant.name,
            variant.format,
            str(variant.precision_on(device)),
            variant.simplicity,
            servable=variant.servable,
        )

    @property
    def passed(self) -> bool:
        return self.gate.ok

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"gate": str(self.gate)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VariantReport:
        return cls(**(d | {"gate": Gate.parse(d.get("gate", "pending"))}))


def select_variant(
    variants: list[VariantReport],
    objective: str = Objective.LATENCY,
    tie_tolerance: float = TIE_TOLERANCE,
) -> VariantReport:
    """The fastest servable variant that passed its gates, for the objective: lowest p50
    latency at the smallest batch, or highest throughput at the largest. Variants within
    `tie_tolerance` of the best are tied, and the simplest of them wins."""
    objective = Objective.parse(objective, "objective")
    eligible = [
        v
        for v in variants
        if v.passed and v.servable and v.latency_ms is not None and v.throughput is not None
    ]
    if not eligible:
        reasons = "; ".join(
            f"{v.name}: {v.gate}" for v in variants if v.gate.status != GateStatus.BASELINE
        )
        raise DlkitError(f"no variant passed its gates ({reasons or 'none were built'})")
    if objective == Objective.LATENCY:
        best = min(v.latency_ms["p50"] for v in eligible)
        tied = [v for v in eligible if v.latency_ms["p50"] <= best * (1 + tie_tolerance)]
    else:
        best = max(v.throughput for v in eligible)
        tied = [v for v in eligible if v.throughput >= best * (1 - tie_tolerance)]
    return min(tied, key=lambda v: v.simplicity)
