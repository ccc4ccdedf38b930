"""Typed benchmark results: a row per variant and batch size, skips, and the whole report.

`to_dict()` gives exactly what `dlkit bench --json` prints and `bench.json` holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolkit.bench.harness import Measurement
from toolkit.variants.registry import BASELINE


@dataclass
class BenchRow:
    """One variant at one batch size. On CUDA `latency_ms` is end to end (with the host
    copies) and `device_latency_ms` is GPU time alone; rows are ranked by the latter there."""

    variant: str
    device: str
    batch_size: int
    latency_ms: dict[str, float]
    throughput: float
    peak_memory_bytes: int | None
    stability: dict[str, Any]
    device_latency_ms: dict[str, float] | None = None
    device_throughput: float | None = None
    device_stability: dict[str, Any] | None = None
    fastest: bool = False
    tied_with_fastest: bool = False  # another row is fastest, but not beyond the noise
    speedup_vs_eager_fp32: float | None = None
    speedup_stable: bool = True  # both figures behind the speed-up settled
    speedup_within_noise: bool = False  # eager fp32 and this row differ by less than the noise

    @classmethod
    def from_measurement(
        cls, variant: str, device: str, batch_size: int, m: Measurement, peak: int | None
    ) -> BenchRow:
        return cls(
            variant=variant,
            device=device,
            batch_size=batch_size,
            latency_ms=m.latency_ms,
            throughput=m.throughput(batch_size),
            peak_memory_bytes=peak,
            stability=m.to_dict(),
        )

    def add_device_time(self, m: Measurement) -> None:
        self.device_latency_ms = m.latency_ms
        self.device_throughput = m.throughput(self.batch_size)
        self.device_stability = m.to_dict()

    @property
    def stable(self) -> bool:
        stable = self.stability["stable"]
        return stable and (self.device_stability is None or self.device_stability["stable"])

    @property
    def rank_value(self) -> float:
        """What rows are ranked by: device time on CUDA, end-to-end latency otherwise (p50)."""
        return (self.device_latency_ms or self.latency_ms)["p50"]

    @property
    def noise(self) -> float:
        """The measured noise of `rank_value`: the relative range of the window medians it
        was computed from."""
        return (self.device_stability or self.stability)["spread"]

    @property
    def best_throughput(self) -> float:
        return self.device_throughput if self.device_throughput is not None else self.throughput

    @property
    def variant_name(self) -> str:
        """The variant without the source prefix (`best:eager-fp32` -> `eager-fp32`)."""
        return self.variant.split(":")[-1]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "variant": self.variant,
            "device": self.device,
            "batch_size": self.batch_size,
            "latency_ms": self.latency_ms,
            "throughput": self.throughput,
            "peak_memory_bytes": self.peak_memory_bytes,
            "includes_host_copies": self.device == "cuda",
            "stability": self.stability,
        }
        if self.device_latency_ms is not None:
            out |= {
                "device_latency_ms": self.device_latency_ms,
                "device_throughput": self.device_throughput,
                "device_stability": self.device_stability,
            }
        return out | {
            "fastest": self.fastest,
            "tied_with_fastest": self.tied_with_fastest,
            "speedup_vs_eager_fp32": self.speedup_vs_eager_fp32,
            "speedup_stable": self.speedup_stable,
            "speedup_within_noise": self.speedup_within_noise,
        }


@dataclass(frozen=True)
class Skip:
    """A variant (at a batch size, or at all when `batch_size` is None) that could not run."""

    variant: str
    batch_size: int | None
    reason: str

    def text(self) -> str:
        batch = f" (batch {self.batch_size})" if self.batch_size else ""
        return f"{self.variant}{batch}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "batch_size": self.batch_size, "reason": self.reason}


@dataclass
class BenchReport:
    """What `dlkit bench` measured, with the machine and settings it was measured under."""

    environment: dict[str, Any]
    settings: dict[str, Any]
    results: list[BenchRow]
    skipped: list[Skip]
    consistency: list[dict[str, Any]] | None = None
    command: str | None = None
    goals: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what a benchmark script adds

    @property
    def device(self) -> str:
        return self.settings["device"]

    def rows(self, variant: str | None = None, batch_size: int | None = None) -> list[BenchRow]:
        return [
            r
            for r in self.results
            if variant in (None, r.variant, r.variant_name) and batch_size in (None, r.batch_size)
        ]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.command is not None:
            out["command"] = self.command
        out |= {
            "environment": self.environment,
            "settings": self.settings,
            "results": [r.to_dict() for r in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
        }
        if self.consistency is not None:
            out["consistency"] = self.consistency
        if self.goals is not None:
            out["goals"] = self.goals
        return out | self.extra


def within_noise(a: BenchRow, b: BenchRow) -> bool:
    """Do two rows' ranking figures differ by no more than the noise measured on them: their
    relative difference within the larger of their spreads (as `agreement` judges two
    measurements of one variant)?"""
    low, high = sorted((a.rank_value, b.rank_value))
    return low > 0 and (high - low) / low <= max(a.noise, b.noise)


def rank(rows: list[BenchRow]) -> None:
    """Rank each batch size's rows by one figure, `rank_value` (p50: device time on CUDA, end
    to end otherwise). Mark the fastest row, the rows tied with it (within the noise, see
    `within_noise`), and each row's speed-up against eager fp32 (the first eager-fp32 row of
    that batch size; None when there is none), noting speed-ups within the noise. A speed-up
    is stable only when both of its figures are."""
    for batch_size in {r.batch_size for r in rows}:
        group = [r for r in rows if r.batch_size == batch_size]
        baseline = next((r for r in group if r.variant_name == BASELINE), None)
        fastest = min(group, key=lambda r: r.rank_value)
        for r in group:
            r.fastest = r is fastest
            r.tied_with_fastest = r is not fastest and within_noise(r, fastest)
            r.speedup_vs_eager_fp32 = (
                baseline.rank_value / r.rank_value if baseline is not None else None
            )
            r.speedup_stable = baseline is None or (baseline.stable and r.stable)
            r.speedup_within_noise = baseline not in (None, r) and within_noise(r, baseline)


def agreement(first: BenchRow, second: BenchRow) -> dict[str, Any]:
    """Do two measurements of the same variant and batch size agree within their spread?"""
    a, b = first.latency_ms["p50"], second.latency_ms["p50"]
    spread = max(first.stability["spread"], second.stability["spread"])
    difference = abs(b - a) / a
    return {
        "variant": first.variant,
        "batch_size": first.batch_size,
        "first_p50_ms": a,
        "second_p50_ms": b,
        "difference": difference,
        "spread": spread,
        "agrees": difference <= spread,
    }
