"""Closed-loop load on a served model: throughput and latency per concurrency level.

The load generator behind `dlkit bench --url`, `dlkit tune` and the serving benchmarks: at each
level, that many threads send requests back to back through one `TritonClient`, after a
warm-up that is not counted, for a fixed time (`measure_level`) or, for several models at
once, in interleaved windows until each model's agree (`measure_interleaved_levels`).
Failures and timeouts are counted, never hidden, and so is the CPU the load generator itself
takes from the machine.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from tritonclient.utils import triton_to_np_dtype

from toolkit.bench.harness import LATENCY_KEYS, latency_stats, relative_spread
from toolkit.choices import Protocol
from toolkit.errors import DlkitError
from toolkit.log import logger
from toolkit.triton.client import ServedModel, TritonClient
from toolkit.triton.sender import PreparedRequest

Send = Callable[[], object]
MAX_REASONS = 5  # distinct failure reasons a level names; the others are counted together


@dataclass
class ServingLevel:
    """One concurrency level: requests answered and failed (`timeouts` of them ran out of
    time), images/s, latency (ms), and the cores the load generator's process used
    (`client_cpu`: its CPU seconds over the wall time). With stability windows, how many
    were taken, whether the last ones agreed, their throughputs' relative range, and the
    cores the server used (`server_cpu`, where a probe could tell). `errors` says what the
    failures were: each reason (first line) with its count."""

    concurrency: int
    batch_size: int
    requests: int
    failures: int
    throughput: float
    latency_ms: dict[str, float]
    seconds: float
    timeouts: int = 0
    client_cpu: float | None = None
    windows: int = 1
    stable: bool | None = None
    spread: float | None = None
    server_cpu: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    timings: list[float] = field(default_factory=list, repr=False)  # seconds, not in to_dict

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "timings"}


def synthetic_batch(served: ServedModel, batch_size: int = 1, seed: int = 0) -> np.ndarray:
    """A batch the model accepts: random normal tensors, or a gray PNG for image models."""
    if served.takes_images:
        size = served.info.preprocessing.image_size if served.info else 32
        buffer = io.BytesIO()
        Image.new("L", (size, size), 128).save(buffer, format="PNG")
        return np.array([[buffer.getvalue()]] * batch_size, dtype=np.object_)
    dims = tuple(1 if d < 0 else d for d in served.input_dims)
    shape = (batch_size, *dims) if served.max_batch_size > 0 else dims
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(triton_to_np_dtype(served.input_datatype))


def measure_serving(
    url: str | Sequence[str],
    model: str,
    concurrency_levels: Sequence[int] = (1, 4, 16),
    duration: float = 5.0,
    batch_size: int = 1,
    warmup: float = 1.0,
    protocol: str | None = None,
    client: TritonClient | None = None,
) -> list[ServingLevel]:
    """At each concurrency level, that many threads send requests of `batch_size` back to back
    for `duration` seconds (after `warmup` seconds not counted)."""
    if duration <= 0 or warmup < 0 or batch_size < 1:
        raise DlkitError("--duration must be positive, the warm-up 0 or more, batches >= 1")
    own = client is None
    client = client or TritonClient(url, protocol=protocol, retries=0)
    try:
        served = client.model(model)
        batch = synthetic_batch(served, batch_size)
        client.infer(model, batch)  # fail fast, before any thread starts
        return [
            measure_level(client, model, batch, c, duration, warmup) for c in concurrency_levels
        ]
    finally:
        if own:
            client.close()


def measure_level(
    client: TritonClient,
    model: str,
    batch: np.ndarray,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
) -> ServingLevel:
    """One closed-loop level: `concurrency` threads for `warmup + duration` seconds; the
    requests that end within the `duration` count, and every failure does."""
    with request_sender(client, model, batch) as send:
        return _level(send, client.timeout, len(batch), concurrency, duration, warmup)


def _level(send: Send, timeout: float, batch_size: int, concurrency: int, duration, warmup):
    with ClosedLoop(send, timeout, batch_size, concurrency) as loop:
        begin = loop.wait_until(loop.start + warmup)
        return loop.level(begin, loop.wait_until(begin + duration), loop.start)


@contextlib.contextmanager
def request_sender(client: TritonClient, model: str, batch: np.ndarray) -> Iterator[Send]:
    """How the load generator sends `batch` to `model`: for one gRPC server without shared
    memory, a request encoded once (`PreparedRequest`: the load generator's own CPU is taken
    from the server it measures); else `client.infer` each time (its failover over several
    servers, its shared-memory regions)."""
    endpoints = client.endpoints
    if len(endpoints) == 1 and endpoints[0].protocol == Protocol.GRPC and client.shm is None:
        served = client.check(model, batch)
        prepared = PreparedRequest(endpoints[0].address, served, batch, client.timeout)
        try:
            yield prepared
        finally:
            prepared.close()
    else:
        yield lambda: client.infer(model, batch)


@dataclass(frozen=True)
class LoadWindows:
    """How `measure_interleaved_levels` measures: after `warmup` seconds per model, windows of
    `window` seconds (each after a settling tenth not counted) until the throughputs of a
    model's last `windows` agree within `tolerance` (relative range), or it has had
    `max_windows` (then its level is marked not stable)."""

    window: float = 1.0
    windows: int = 3
    tolerance: float = 0.10
    max_windows: int = 8
    warmup: float = 0.5

    def __post_init__(self) -> None:
        if not (self.window > 0 and self.warmup >= 0 and 0 < self.tolerance < 1):
            raise DlkitError(
                "windows need a positive length, a warm-up >= 0, a tolerance in (0, 1)"
            )
        if not 2 <= self.windows <= self.max_windows:
            raise DlkitError("compare at least 2 windows, and no more than the most taken")


Probe = Callable[[], "float | None"]


def measure_interleaved_levels(
    client: TritonClient,
    models: Sequence[str],
    batch: np.ndarray,
    concurrency: int,
    windows: LoadWindows,
    probe: Probe | None = None,
) -> dict[str, ServingLevel]:
    """One closed-loop level for each of several served models, their windows taken in turn
    (A, B, C, A, B, ...) so that other load on the machine hits them alike, each until its
    own windows agree (see `LoadWindows`). A model's figures come from its windows compared
    last; its failures from all of them. `probe()` (say, the server's CPU seconds so far) is
    read around each window and reported per second of window as `server_cpu`.

    A window restarts the load, so each settles for at least one typical request (from the
    warm-up) and lasts at least four: a slow config at high concurrency (a second a request)
    gets windows long enough to count whole requests."""
    with contextlib.ExitStack() as stack:
        senders = {m: stack.enter_context(request_sender(client, m, batch)) for m in models}
        warm = {m: _warm_up(senders[m], client.timeout, concurrency, windows) for m in models}
        taken: dict[str, list[ServingLevel]] = {m: [] for m in models}
        busy: dict[str, list[float]] = {m: [] for m in models}
        pending = list(models)
        while pending:
            for model in pending:
                typical = warm[model][1]
                length, settle = max(windows.window, 4 * typical), max(windows.window / 10, typical)
                before, start = probe() if probe else None, time.perf_counter()
                level = _level(
                    senders[model], client.timeout, len(batch), concurrency, length, settle
                )
                after = probe() if probe else None
                taken[model].append(level)
                if before is not None and after is not None:
                    busy[model].append((after - before) / (time.perf_counter() - start))
            pending = [m for m in pending if not _settled(taken[m], windows)]
    return {m: _combine(taken[m], busy[m], windows, warm[m][0]) for m in models}


def _warm_up(
    send: Send, timeout: float, concurrency: int, windows: LoadWindows
) -> tuple[list[tuple[bool, str]], float]:
    """Load not measured, for `windows.warmup` seconds and until every thread has had two
    answers (or the request timeout has passed): its failures (`(late, reason)`, late for a
    timeout), which still count, and the median time a request took."""
    with ClosedLoop(send, timeout, 1, concurrency) as loop:
        moment = loop.wait_until(loop.start + windows.warmup)
        while sum(map(len, loop.done)) < 2 * concurrency and moment < loop.start + timeout:
            moment = loop.wait_until(moment + windows.warmup)
    took = [d for done in loop.done for _, d in done]
    failed = [(late, why) for failed in loop.failed for _, late, why in failed]
    return failed, statistics.median(took) if took else timeout


def _settled(levels: list[ServingLevel], windows: LoadWindows) -> bool:
    recent = [lv.throughput for lv in levels[-windows.windows :]]
    agree = len(recent) == windows.windows and relative_spread(recent) <= windows.tolerance
    return agree or len(levels) >= windows.max_windows


def _combine(
    levels: list[ServingLevel],
    busy: list[float],
    windows: LoadWindows,
    warm: list[tuple[bool, str]],
) -> ServingLevel:
    """One level from a model's windows: figures from the last compared, failures from all
    (and from its warm-up, `warm`)."""
    recent = levels[-windows.windows :]
    timings = [t for lv in recent for t in lv.timings]
    seconds = sum(lv.seconds for lv in recent)
    rates = [lv.throughput for lv in recent]
    return ServingLevel(
        concurrency=recent[0].concurrency,
        batch_size=recent[0].batch_size,
        requests=len(timings),
        failures=sum(lv.failures for lv in levels) + len(warm),
        throughput=sum(lv.requests for lv in recent) * recent[0].batch_size / seconds,
        latency_ms=latency_stats(timings) if timings else dict.fromkeys(LATENCY_KEYS, math.nan),
        seconds=seconds,
        timeouts=sum(lv.timeouts for lv in levels) + sum(late for late, _ in warm),
        client_cpu=sum(lv.client_cpu * lv.seconds for lv in recent) / seconds,
        windows=len(levels),
        stable=len(rates) == windows.windows and relative_spread(rates) <= windows.tolerance,
        spread=relative_spread(rates),
        server_cpu=sum(busy[-windows.windows :]) / len(recent) if busy else None,
        errors=_reasons([(0.0, late, why) for late, why in warm], 0.0, levels),
    )


def _reasons(failed, since: float, levels: Sequence[ServingLevel] = ()) -> dict[str, int]:
    """Failures `(when, late, reason)` since `since`, with those of `levels`, counted by
    reason: the commonest `MAX_REASONS`, the rest as one "other" entry."""
    counts = collections.Counter(why for t, _, why in failed if t >= since)
    for level in levels:
        counts.update(level.errors)
    top = dict(counts.most_common(MAX_REASONS))
    rest = sum(counts.values()) - sum(top.values())
    return top | ({"other reasons": rest} if rest else {})


class ClosedLoop:
    """`concurrency` threads calling `send` back to back until the block ends; each records
    when its requests ended and how long they took, and its failures (a failure that took the
    whole `timeout` counts as a timeout). Requests carry `batch_size` images."""

    def __init__(self, send: Send, timeout: float, batch_size: int, concurrency: int):
        if concurrency < 1:
            raise DlkitError(f"concurrency must be at least 1, got {concurrency}")
        self.send, self.timeout, self.batch_size = send, timeout, batch_size
        self.done: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
        self.failed: list[list[tuple[float, bool, str]]] = [[] for _ in range(concurrency)]
        self.unexpected = threading.Event()  # set once one was logged
        self.cpu: dict[float, float] = {}
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._worker, args=(i,)) for i in range(concurrency)
        ]

    def _worker(self, i: int) -> None:
        done, failed, timeout = self.done[i], self.failed[i], self.timeout
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                self.send()
            except Exception as exc:  # every failure counts, whatever raised it
                now = time.perf_counter()
                failed.append((now, now - start >= timeout, self._reason(exc)))
                continue
            now = time.perf_counter()
            done.append((now, now - start))

    def _reason(self, exc: Exception) -> str:
        lines = str(exc).strip().splitlines()
        text = (lines[0] if lines else "")[:200]
        if isinstance(exc, DlkitError):
            return text
        if not self.unexpected.is_set():  # not the server's answer: a bug here, say it once
            self.unexpected.set()
            logger.warning("warning: the load generator's request failed: %r", exc)
        return f"{type(exc).__name__}: {text}"

    def __enter__(self) -> ClosedLoop:
        self.start = time.perf_counter()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def wait_until(self, moment: float) -> float:
        """Sleep until `moment` (a perf_counter time), note this process's CPU time then (the
        load generator's share), and return `moment`."""
        time.sleep(max(0.0, moment - time.perf_counter()))
        self.cpu[moment] = time.process_time()
        return moment

    def level(self, begin: float, end: float, failures_since: float) -> ServingLevel:
        """The figures of the requests that ended in [begin, end) (both moments passed to
        `wait_until`); failures since `failures_since`."""
        timings = [d for done in self.done for t, d in list(done) if begin <= t < end]
        failed = [f for failed in self.failed for f in list(failed)]
        failures = [late for t, late, _ in failed if t >= failures_since]
        return ServingLevel(
            concurrency=len(self.threads),
            batch_size=self.batch_size,
            requests=len(timings),
            failures=len(failures),
            throughput=len(timings) * self.batch_size / (end - begin),
            latency_ms=latency_stats(timings) if timings else dict.fromkeys(LATENCY_KEYS, math.nan),
            seconds=end - begin,
            timeouts=sum(failures),
            client_cpu=(self.cpu[end] - self.cpu[begin]) / (end - begin),
            errors=_reasons(failed, failures_since),
            timings=timings,
        )
