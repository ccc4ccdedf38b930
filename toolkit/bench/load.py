"""Closed-loop load on a served model: throughput and latency per concurrency level.

The load generator behind `dlkit bench --url` and the serving benchmarks: at each level, that
many threads send requests back to back through one `TritonClient` for a fixed time, after a
warm-up that is not counted. Failures are counted, never hidden.
"""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image
from tritonclient.utils import triton_to_np_dtype

from toolkit.bench.harness import LATENCY_KEYS, latency_stats
from toolkit.errors import DlkitError
from toolkit.triton.client import ServedModel, TritonClient


@dataclass
class ServingLevel:
    """One concurrency level: requests answered and failed, images/s, latency (ms)."""

    concurrency: int
    batch_size: int
    requests: int
    failures: int
    throughput: float
    latency_ms: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    """One closed-loop level: `concurrency` threads for `warmup + duration` seconds."""
    if concurrency < 1:
        raise DlkitError(f"concurrency must be at least 1, got {concurrency}")
    start = time.perf_counter()
    begin, end = start + warmup, start + warmup + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency

    def worker(i: int) -> None:
        while (now := time.perf_counter()) < end:
            try:
                client.infer(model, batch)
            except DlkitError:
                failures[i] += now >= begin
                continue
            if now >= begin:
                latencies[i].append(time.perf_counter() - now)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Requests still running at `end` finish late; count the time they really took.
    elapsed = max(time.perf_counter(), end) - begin
    timings = list(itertools.chain.from_iterable(latencies))
    return ServingLevel(
        concurrency=concurrency,
        batch_size=len(batch),
        requests=len(timings),
        failures=sum(failures),
        throughput=len(timings) * len(batch) / elapsed,
        latency_ms=latency_stats(timings) if timings else dict.fromkeys(LATENCY_KEYS, float("nan")),
        seconds=elapsed,
    )
