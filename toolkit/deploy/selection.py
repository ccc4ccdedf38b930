"""Which variants a device gets, what the report says of each, and how one is selected."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.errors import DlkitError

OBJECTIVES = ("latency", "throughput")
# Within this fraction of the best figure, variants count as tied and the simpler one wins:
# benchmark noise on a shared machine is about this size.
TIE_TOLERANCE = 0.05


@dataclass(frozen=True)
class Candidate:
    """A way to serve the model; lower `simplicity` is simpler to run and reason about."""

    name: str
    format: str
    precision: str
    simplicity: int
    quantize_mode: str | None = None


CANDIDATES = {
    "cpu": (
        Candidate("onnx-fp32", "onnx", "fp32", 0),
        Candidate("torchscript-fp32", "torchscript", "fp32", 1),
        Candidate("onnx-int8-dynamic", "onnx", "int8", 2, "dynamic"),
        Candidate("onnx-int8-static", "onnx", "int8", 3, "static"),
    ),
    "cuda": (
        Candidate("onnx-fp32", "onnx", "fp32", 0),
        Candidate("torchscript-fp32", "torchscript", "fp32", 1),
        Candidate("onnx-fp16", "onnx", "fp16", 2, "fp16"),
    ),
}


@dataclass
class VariantReport:
    """One row of the deploy report."""

    name: str
    format: str
    precision: str
    simplicity: int
    path: str | None = None
    servable: bool = True
    accuracy: float | None = None
    accuracy_drop_points: float | None = None
    top1_agreement: float | None = None
    size_bytes: int | None = None
    gate: str = "pending"  # "passed", "baseline", or "failed: why"
    latency_ms: dict[str, float] | None = None  # p50/p99… at the smallest batch size
    throughput: float | None = None  # samples/s at the largest batch size
    benchmark: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False

    @property
    def passed(self) -> bool:
        return self.gate == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_variant(
    variants: list[VariantReport], objective: str = "latency", tie_tolerance: float = TIE_TOLERANCE
) -> VariantReport:
    """The fastest servable variant that passed its gates, for the objective: lowest p50
    latency at the smallest batch, or highest throughput at the largest. Variants within
    `tie_tolerance` of the best are tied, and the simplest of them wins."""
    if objective not in OBJECTIVES:
        raise DlkitError(f"unknown objective {objective!r}; choose latency or throughput")
    eligible = [
        v
        for v in variants
        if v.passed and v.servable and v.latency_ms is not None and v.throughput is not None
    ]
    if not eligible:
        reasons = "; ".join(f"{v.name}: {v.gate}" for v in variants if v.gate != "baseline")
        raise DlkitError(f"no variant passed its gates ({reasons or 'none were built'})")
    if objective == "latency":
        best = min(v.latency_ms["p50"] for v in eligible)
        tied = [v for v in eligible if v.latency_ms["p50"] <= best * (1 + tie_tolerance)]
    else:
        best = max(v.throughput for v in eligible)
        tied = [v for v in eligible if v.throughput >= best * (1 - tie_tolerance)]
    return min(tied, key=lambda v: v.simplicity)
