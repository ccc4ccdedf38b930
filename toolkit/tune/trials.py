"""One trial of `dlkit tune`: a config, whether it loaded, and what it served at each level.

Trials are measured in rounds: the best config so far and its neighbours along one axis, all
loaded at once and their measurement windows interleaved, so that other work on the machine
hits them alike. A config measured in several rounds is a trial in each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolkit.bench.load import ServingLevel
from toolkit.choices import Choice
from toolkit.triton.statistics import ServerTimes
from toolkit.tune.space import TrialConfig


class TrialStatus(Choice):
    MEASURED = "measured"
    FAILED = "failed"  # did not load, or did not load in time
    CRASHED = "crashed"  # the server died during the trial (it was restarted)


@dataclass
class LevelResult:
    """One concurrency level of a trial: the load generator's figures (with the cores the
    server's processes used over its windows, where the platform can tell), and where the
    time went inside the server (Triton's statistics over the level)."""

    load: ServingLevel
    server: ServerTimes | None = None

    @property
    def concurrency(self) -> int:
        return self.load.concurrency

    @property
    def throughput(self) -> float:
        return self.load.throughput

    @property
    def p50_ms(self) -> float:
        return self.load.latency_ms["p50"]

    @property
    def p99_ms(self) -> float:
        return self.load.latency_ms["p99"]

    @property
    def failures(self) -> int:
        return self.load.failures

    def to_dict(self) -> dict[str, Any]:
        load = self.load
        return {
            "concurrency": load.concurrency,
            "throughput": load.throughput,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "failures": load.failures,
            "timeouts": load.timeouts,
            "requests": load.requests,
            "stable": load.stable,
            "windows": load.windows,
            "spread": load.spread,
            "client_cpu": load.client_cpu,
            "server_cpu": load.server_cpu,
            "server": self.server.to_dict() if self.server else None,
        }


@dataclass
class Trial:
    """A config as measured in round `round` (which searched `axis`): `levels` in the order
    measured; `error` says why it failed; `seconds` is its share of the round's time."""

    index: int
    config: TrialConfig
    round: int = 0
    axis: str = ""
    status: TrialStatus = TrialStatus.MEASURED
    error: str = ""
    levels: list[LevelResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == TrialStatus.MEASURED

    def level(self, concurrency: int) -> LevelResult | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.index,
            "round": self.round,
            "axis": self.axis,
            **self.config.to_dict(),
            "status": str(self.status),
            "error": self.error,
            "levels": [lv.to_dict() for lv in self.levels],
            "seconds": round(self.seconds, 2),
        }
