"""Timing: warm-up, then measurement windows until consecutive windows agree, then percentiles.

A "step" is one timed iteration: a function that runs the work once and returns how long it
took in seconds. `wall_clock_step` times host work (and, with a synchronize function, GPU work
end to end); `cuda_event_step` times only what runs on the GPU stream. The harness itself adds
two `perf_counter` calls and a list append per iteration.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.errors import DlkitError

PERCENTILES = (50, 90, 95, 99)
LATENCY_KEYS = ("p50", "p90", "p95", "p99", "mean", "std", "min")

Step = Callable[[], float]


@dataclass(frozen=True)
class MeasureConfig:
    """How long and how carefully to measure the variants of one batch size.

    A window is `iters` iterations, or (when `iters` is None) at least `min_window_iters`
    iterations and `min_time` seconds of measured time. Measurement stops when the medians of
    the last `windows` windows of every variant lie within `tolerance` of each other
    (relative range), or when `max_time` seconds have been measured, all variants together;
    then the figures that had not settled are reported as not stable. Warm-up is `warmup`
    iterations, cut short after `warmup_time` seconds for slow work (a later slow start still
    shows as windows that disagree).
    """

    warmup: int = 5
    warmup_time: float = 10.0
    iters: int | None = None
    min_time: float = 0.5
    min_window_iters: int = 5
    windows: int = 3
    tolerance: float = 0.05
    max_time: float = 30.0

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise DlkitError("--warmup must be 0 or more")
        if self.iters is not None and self.iters < 1:
            raise DlkitError("--iters must be at least 1")
        if self.min_time < 0 or self.max_time <= 0:
            raise DlkitError("--min-time must be 0 or more and --max-time more than 0")
        if self.windows < 2:
            raise DlkitError("--windows must be at least 2: stability needs windows to compare")
        if not 0 < self.tolerance < 1:
            raise DlkitError("--tolerance is a fraction between 0 and 1 (0.05 = 5%)")


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99/mean/std/min of per-iteration times, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timings to summarise")
    p50, p90, p95, p99 = np.percentile(ms, PERCENTILES)
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(ms.mean()),
        "std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min": float(ms.min()),
    }


def relative_spread(values: Sequence[float]) -> float:
    """(max − min) / median: how far apart a set of window medians are, as a fraction."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle > 0 else 0.0


@dataclass
class Measurement:
    """The outcome of `measure`: statistics over the windows that were compared last."""

    latency_ms: dict[str, float]
    iterations: int
    windows: int
    window_medians_ms: list[float]
    spread: float
    stable: bool
    measured_s: float

    def throughput(self, batch_size: int) -> float:
        """Samples per second at this batch size (one batch at a time)."""
        return batch_size / (self.latency_ms["mean"] / 1e3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "windows": self.windows,
            "window_medians_ms": self.window_medians_ms,
            "spread": self.spread,
            "stable": self.stable,
            "measured_s": self.measured_s,
        }


def measure(step: Step, config: MeasureConfig | None = None) -> Measurement:
    """Warm up, then time windows of iterations until the last `config.windows` agree.

    The statistics use only the compared windows, so a slow start (caches, autotuning, a
    burst of load) that did not agree with what followed is left out rather than averaged in.
    """
    return measure_interleaved({"step": step}, config)["step"]


def measure_interleaved(
    steps: dict[str, Step], config: MeasureConfig | None = None
) -> dict[str, Measurement]:
    """`measure` for several steps at once, in rounds: one window of every step in turn (A, B,
    C, A, B, C, ...), so that load on a shared machine hits every step alike instead of
    whichever ran during it. Each step is warmed up first. Rounds go on, every step measured
    in each, until the last `config.windows` windows of every step agree, so that the windows
    compared are the same rounds for all of them (a step that settles early is not left
    with figures from a quieter or busier moment than the others). `config.max_time` bounds
    the measured time of all steps together: once it is spent (and `config.windows` rounds
    are done) no round is started, and the steps not settled then are reported unstable."""
    config = config or MeasureConfig()
    for step in steps.values():
        warm_up(step, config)
    states = {name: _Windows(config) for name in steps}
    for rounds in itertools.count(1):
        for name, step in steps.items():
            states[name].add(_window(step, config))
        spent = sum(state.measured for state in states.values())
        settled = all(state.stable for state in states.values())
        if rounds >= config.windows and (settled or spent >= config.max_time):
            break
    return {name: state.result() for name, state in states.items()}


def warm_up(step: Step, config: MeasureConfig) -> None:
    """`config.warmup` iterations, cut short after `config.warmup_time` seconds."""
    warmed = 0.0
    for _ in range(config.warmup):
        warmed += step()
        if warmed >= config.warmup_time:
            break


class _Windows:
    """The windows of one step, and whether its last ones agree."""

    def __init__(self, config: MeasureConfig):
        self.config = config
        self.windows: list[list[float]] = []
        self.measured = 0.0

    def add(self, window: list[float]) -> None:
        self.windows.append(window)
        self.measured += sum(window)

    @property
    def recent_medians(self) -> list[float]:
        return [statistics.median(w) for w in self.windows[-self.config.windows :]]

    @property
    def stable(self) -> bool:
        medians = self.recent_medians
        return len(medians) == self.config.windows and (
            relative_spread(medians) <= self.config.tolerance
        )

    def result(self) -> Measurement:
        recent = self.windows[-self.config.windows :]
        medians = self.recent_medians
        samples = [t for w in recent for t in w]
        return Measurement(
            latency_ms=latency_stats(samples),
            iterations=len(samples),
            windows=len(self.windows),
            window_medians_ms=[m * 1e3 for m in medians],
            spread=relative_spread(medians),
            stable=self.stable,
            measured_s=self.measured,
        )


def _window(step: Step, config: MeasureConfig) -> list[float]:
    times: list[float] = []
    if config.iters is not None:
        return [step() for _ in range(config.iters)]
    while len(times) < config.min_window_iters or sum(times) < config.min_time:
        times.append(step())
    return times


def wall_clock_step(
    fn: Callable[..., Any], *args: Any, synchronize: Callable[[], None] | None = None
) -> Step:
    """Time `fn(*args)` with the host clock. Pass `torch.cuda.synchronize` for GPU work, so
    that nothing queued before the start is counted and nothing still running at the end is
    missed."""

    def step() -> float:
        if synchronize is not None:
            synchronize()
        start = time.perf_counter()
        fn(*args)
        if synchronize is not None:
            synchronize()
        return time.perf_counter() - start

    return step


def cuda_event_step(fn: Callable[..., Any], *args: Any) -> Step:
    """Time `fn(*args)` on the current CUDA stream with CUDA events: GPU time only, no host
    copies (the arguments should already be on the device)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step() -> float:
        torch.cuda.synchronize()  # nothing from an earlier iteration may still be queued
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return step


def harness_overhead_ms() -> float:
    """What the harness itself costs per iteration: its p50 timing a call that does nothing
    (the call, two clock reads and the bookkeeping)."""
    config = MeasureConfig(warmup=100, iters=1000, tolerance=0.5, max_time=1.0)
    return measure(wall_clock_step(lambda: None), config).latency_ms["p50"]


def compare_with_torch_timer(
    fn: Callable[[], Any], rounds: int = 5, min_run_time: float = 0.3
) -> dict[str, float]:
    """The harness's p50 against `torch.utils.benchmark.Timer.blocked_autorange` on `fn`.

    Rounds alternate between the two so that machine noise hits both alike; the figures are
    medians over rounds. On a quiet machine the ratio is 1 within a few percent; on a loaded
    one Timer reads higher, because its blocks average in the stalls a median leaves out.
    """
    from torch.utils.benchmark import Timer

    config = MeasureConfig(warmup=3, min_time=min_run_time / 3, tolerance=0.5, max_time=2.0)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=_torch_threads())
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(measure(wall_clock_step(fn), config).latency_ms["p50"])
        theirs.append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    harness_ms, timer_ms = statistics.median(ours), statistics.median(theirs)
    return {
        "harness_p50_ms": harness_ms,
        "timer_median_ms": timer_ms,
        "ratio": harness_ms / timer_ms,
        "harness_overhead_ms": harness_overhead_ms(),
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
