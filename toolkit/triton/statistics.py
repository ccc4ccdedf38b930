"""Triton's statistics extension, read as where a served request's time went inside the server.

Triton keeps cumulative counters per model (requests, executions, nanoseconds spent queued and
in compute input/infer/output). `ServerTimes.between(before, after)` turns two snapshots into
means per request over what happened in between. For a python-backend model, `compute_infer`
is the whole round trip to the model's stub process: the hand-over through shared memory and
`execute` in the stub, the runtime's own work included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from toolkit.errors import DlkitError

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class StatsSnapshot:
    """Cumulative counters of one model version, as Triton reports them."""

    requests: int  # successful requests (inference_stats.success.count)
    executions: int  # batches the model ran
    ns: dict[str, int]  # cumulative nanoseconds per phase, and "success" (the whole request)
    failures: int


def snapshot(statistics: dict[str, Any], model: str) -> StatsSnapshot:
    """The counters of `model` in an answer of `TritonClient.statistics(model)` (summed over
    its versions)."""
    try:
        entries = [s for s in statistics.get("model_stats", []) if s.get("name") == model]
        ns = dict.fromkeys((*PHASES, "success"), 0)
        requests = executions = failures = 0
        for entry in entries:
            stats = entry.get("inference_stats", {})
            for phase in ns:
                ns[phase] += int(stats.get(phase, {}).get("ns", 0))
            requests += int(stats.get("success", {}).get("count", 0))
            failures += int(stats.get("fail", {}).get("count", 0))
            executions += int(entry.get("execution_count", 0))
    except (AttributeError, TypeError, ValueError) as exc:  # a peer's JSON of another shape
        raise DlkitError(
            f"the statistics answered for model {model!r} are not Triton's ({exc})"
        ) from None
    if not entries:
        raise DlkitError(f"Triton reports no statistics for model {model!r}")
    return StatsSnapshot(requests, executions, ns, failures)


@dataclass(frozen=True)
class ServerTimes:
    """Means per request (microseconds) between two snapshots: time queued, in compute input,
    infer and output, and in all (`total`: from the request's arrival to its response);
    `mean_batch` is requests per execution (what dynamic batching formed)."""

    requests: int
    failures: int
    mean_batch: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    total_us: float

    @classmethod
    def between(cls, before: StatsSnapshot, after: StatsSnapshot) -> ServerTimes:
        requests = after.requests - before.requests
        executions = after.executions - before.executions
        per = max(requests, 1) * 1e3

        def mean(phase: str) -> float:
            return (after.ns[phase] - before.ns[phase]) / per

        return cls(
            requests=requests,
            failures=after.failures - before.failures,
            mean_batch=requests / executions if executions else 0.0,
            queue_us=mean("queue"),
            compute_input_us=mean("compute_input"),
            compute_infer_us=mean("compute_infer"),
            compute_output_us=mean("compute_output"),
            total_us=mean("success"),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
