"""Failover: one TritonClient over two local tritonservers, one of them killed under load.

Starts two pip-installed tritonservers (python backend, ONNX Runtime on CPU) on one repository
(the smallresnet of `serving.py`), sends a bounded closed-loop load through one `TritonClient`
given both URLs, and SIGKILLs the second server (its whole process group) once half of the
requests have been answered. Reports requests lost (goal: none), throughput before and after
the kill, and the failover time: the slowest request that was in flight at the kill or started
after it, next to the p99 before it.

    python benchmarks/failover.py [--requests 4000] [--concurrency 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from serving import CHANNELS, IMAGE_SIZE, MODEL, build_repository
from serving_tune import export

from toolkit.bench.harness import latency_stats
from toolkit.errors import DlkitError
from toolkit.triton.client import TritonClient
from toolkit.triton.configs import ServingOptions
from toolkit.triton.server import TritonServer, free_port


def load_with_kill(client: TritonClient, requests: int, concurrency: int, limit: float, kill):
    """`concurrency` threads share `requests` batch-1 requests (stopping after `limit` seconds
    in any case); `kill()` runs when half of them have been answered. Returns the requests as
    (start, end, ok), the errors, and when the kill happened."""
    batch = np.zeros((1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    tickets = iter(range(requests))
    lock = threading.Lock()
    done: list[tuple[float, float, bool]] = []
    errors: list[str] = []
    killed_at = [float("inf")]
    deadline = time.perf_counter() + limit

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                if next(tickets, None) is None:
                    return
            start = time.perf_counter()
            try:
                client.infer(MODEL, batch)
                ok = True
            except DlkitError as exc:
                ok = False
                errors.append(str(exc))
            with lock:
                done.append((start, time.perf_counter(), ok))
                if len(done) == requests // 2:
                    killed_at[0] = time.perf_counter()
                    kill()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done, errors, killed_at[0]


def summarise(done, errors, killed_at: float, requests: int) -> dict:
    first = min(start for start, _, _ in done)
    last = max(end for _, end, _ in done)
    before = [end - start for start, end, ok in done if ok and end <= killed_at]
    across = [end - start for start, end, ok in done if ok and end > killed_at]
    answered_before = sum(1 for _, end, ok in done if ok and end <= killed_at)
    return {
        "requests": requests,
        "answered": sum(ok for _, _, ok in done),
        "lost": requests - sum(ok for _, _, ok in done),
        "errors": errors[:5],
        "throughput_before_rps": answered_before / (killed_at - first),
        "throughput_after_rps": (len(done) - answered_before) / (last - killed_at),
        "latency_before_ms": latency_stats(before),
        "latency_after_ms": latency_stats(across),
        "failover_ms": max(across) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--limit", type=float, default=300.0, help="Seconds at most.")
    parser.add_argument("--cooldown", type=float, default=5.0, help="TritonClient's cooldown.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dlkit-failover-") as tmp:
        serving = ServingOptions(max_batch_size=32, max_queue_delay_us=1000)
        repo = build_repository(export("digits", Path(tmp)), Path(tmp), serving)
        ports = [{f"{k}_port": free_port() for k in ("http", "grpc", "metrics")} for _ in "ab"]
        servers = [TritonServer(repo, **p) for p in ports]
        try:
            for server in servers:
                server.start(300)
            urls = [s.grpc_url for s in servers]
            victim = servers[1].process.pid
            with TritonClient(urls, timeout=10, cooldown=args.cooldown) as client:
                client.infer(MODEL, np.zeros((1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), np.float32))
                done, errors, killed_at = load_with_kill(
                    client, args.requests, args.concurrency, args.limit,
                    lambda: os.killpg(victim, signal.SIGKILL),
                )  # fmt: skip
        finally:
            for server in servers:
                server.stop()
    figures = summarise(done, errors, killed_at, args.requests)
    command = "python benchmarks/failover.py " + " ".join(sys.argv[1:])
    result = {
        "command": command.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "setup": f"two tritonservers on 127.0.0.1 (gRPC), {MODEL} {CHANNELS}x{IMAGE_SIZE}x"
        f"{IMAGE_SIZE} ONNX on the python backend; {args.concurrency} client threads, batch 1, "
        f"client timeout 10 s, cooldown {args.cooldown:g} s; the second server SIGKILLed "
        f"after {args.requests // 2} answers",
        **figures,
        "goals": {"no_request_lost": figures["lost"] == 0},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover.json").write_text(json.dumps(result, indent=2) + "\n")
    b, a = figures["latency_before_ms"], figures["latency_after_ms"]
    (args.out / "failover.md").write_text(
        "# Failover: two tritonservers behind one TritonClient, one killed under load\n\n"
        f"`{result['command']}` on {result['machine']}\n\n{result['setup']}.\n\n"
        "| | requests/s | p50 (ms) | p99 (ms) |\n| --- | --- | --- | --- |\n"
        f"| both servers | {figures['throughput_before_rps']:.0f} | {b['p50']:.2f} | "
        f"{b['p99']:.2f} |\n"
        f"| after the kill | {figures['throughput_after_rps']:.0f} | {a['p50']:.2f} | "
        f"{a['p99']:.2f} |\n\n"
        f"Answered **{figures['answered']} of {figures['requests']}** requests "
        f"({figures['lost']} lost; goal: none). Failover time, the slowest request in flight at "
        f"the kill or after it: **{figures['failover_ms']:.0f} ms** (p99 before the kill: "
        f"{b['p99']:.2f} ms).\n\nBoth servers share this machine's cores, so one server alone "
        "is not slower than two here; the figures that matter are the requests lost and the "
        "failover time.\n"
    )
    print(json.dumps({k: figures[k] for k in ("lost", "failover_ms", "throughput_before_rps")}))


if __name__ == "__main__":
    main()
