"""Serving on Triton: the client wrapper's overhead, and what dynamic batching buys, in one run.

Starts its own pip-installed tritonserver (python backend, ONNX Runtime on CPU) serving a
smallresnet for 32x32 grayscale digits (random weights: only speed is measured), then

1. p50 latency of `TritonClient.infer` against raw `tritonclient` gRPC calls building the same
   request, batch 1, in interleaved blocks so machine noise hits both alike (goal: the wrapper
   within 10% of raw);
2. throughput of `measure_serving` at concurrency 1 and 16 with dynamic batching
   (goal: concurrency 16 gives at least 2x the throughput of concurrency 1).

    python benchmarks/serving.py [--rounds 10] [--requests 200] [--duration 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from toolkit.artifacts.metadata import ArtifactInfo, DataSource, Preprocessing
from toolkit.bench.harness import latency_stats
from toolkit.bench.load import measure_serving
from toolkit.training.models import create_model
from toolkit.triton.client import TritonClient
from toolkit.triton.configs import ServingOptions
from toolkit.triton.repository import PackageOptions, package_artifact
from toolkit.triton.server import TritonServer, free_port
from toolkit.variants.export import export_model

MODEL, IMAGE_SIZE, CHANNELS, CLASSES = "smallresnet", 32, 1, 10


def build_repository(root: Path, max_batch_size: int, queue_delay_us: int) -> Path:
    torch.manual_seed(0)
    model, spec = create_model(MODEL, CLASSES, CHANNELS, IMAGE_SIZE)
    info = ArtifactInfo(
        classes=tuple(str(i) for i in range(CLASSES)),
        preprocessing=Preprocessing.default(CHANNELS, IMAGE_SIZE),
        model=spec,
        source=DataSource(dataset=None, data=str(root / "none")),  # parity on random inputs
    )
    [onnx] = export_model(model, info, root / "export", MODEL, formats=("onnx",))
    serving = ServingOptions(max_batch_size=max_batch_size, max_queue_delay_us=queue_delay_us)
    options = PackageOptions(backend="python", serving=serving)
    package_artifact(onnx.path, root / "repo", MODEL, options=options)
    return root / "repo"


def raw_vs_wrapper(url: str, rounds: int, requests: int) -> dict:
    """Interleaved blocks of batch-1 requests: raw tritonclient, then the wrapper, `rounds`
    times; per-request latencies of each side pooled."""
    import tritonclient.grpc as grpcclient

    batch = np.random.default_rng(0).standard_normal((1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE))
    batch = batch.astype(np.float32)
    raw = grpcclient.InferenceServerClient(url)
    wrapper = TritonClient(url)

    def raw_call() -> np.ndarray:
        tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        output = grpcclient.InferRequestedOutput("logits")
        return raw.infer(MODEL, [tensor], outputs=[output]).as_numpy("logits")

    def wrapper_call() -> np.ndarray:
        return wrapper.infer(MODEL, batch)

    np.testing.assert_array_equal(raw_call(), wrapper_call())
    times: dict[str, list[float]] = {"raw": [], "wrapper": []}
    for _ in range(rounds):
        for name, call in (("raw", raw_call), ("wrapper", wrapper_call)):
            for _ in range(requests):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    raw.close()
    wrapper.close()
    stats = {name: latency_stats(t) for name, t in times.items()}
    return {
        "rounds": rounds,
        "requests_per_round": requests,
        "raw_latency_ms": stats["raw"],
        "wrapper_latency_ms": stats["wrapper"],
        "p50_ratio": stats["wrapper"]["p50"] / stats["raw"]["p50"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200, help="Requests per round and side.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per concurrency.")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--queue-delay-us", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dlkit-serving-") as tmp:
        repo = build_repository(Path(tmp), args.max_batch_size, args.queue_delay_us)
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        with TritonServer(repo, **ports) as server:
            overhead = raw_vs_wrapper(server.grpc_url, args.rounds, args.requests)
            levels = [
                level.to_dict()
                for level in measure_serving(
                    server.grpc_url, MODEL, (1, 16), duration=args.duration, warmup=2.0
                )
            ]
    speedup = levels[1]["throughput"] / levels[0]["throughput"]
    command = "python benchmarks/serving.py " + " ".join(sys.argv[1:])
    result = {
        "command": command.strip(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, Python "
        f"{platform.python_version()}",
        "model": f"{MODEL} {CHANNELS}x{IMAGE_SIZE}x{IMAGE_SIZE}, {CLASSES} classes, ONNX on the "
        "python backend (ONNX Runtime, CPU)",
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_us": args.queue_delay_us,
        "wrapper_overhead": overhead,
        "dynamic_batching": {"levels": levels, "throughput_ratio_16_vs_1": speedup},
        "goals": {
            "wrapper_p50_within_10pct": overhead["p50_ratio"] <= 1.10,
            "batching_2x_at_16": speedup >= 2.0,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    raw, wrapped = overhead["raw_latency_ms"], overhead["wrapper_latency_ms"]
    rows = "\n".join(
        f"| {lv['concurrency']} | {lv['throughput']:.0f} | {lv['latency_ms']['p50']:.2f} | "
        f"{lv['latency_ms']['p99']:.2f} | {lv['requests']} | {lv['failures']} |"
        for lv in levels
    )
    (args.out / "serving.md").write_text(
        f"# Serving on Triton: wrapper overhead and dynamic batching\n\n"
        f"`{result['command']}` on {result['machine']}\n\n"
        f"Model: {result['model']}; max batch {args.max_batch_size}, dynamic batching with "
        f"{args.queue_delay_us} µs queue delay; gRPC on 127.0.0.1; pip-installed tritonserver.\n\n"
        f"## TritonClient vs raw tritonclient (batch 1, {args.rounds} interleaved rounds of "
        f"{args.requests} requests each)\n\n"
        "| client | p50 (ms) | p90 (ms) | p99 (ms) | mean (ms) |\n| --- | --- | --- | --- | --- |\n"
        f"| raw tritonclient | {raw['p50']:.3f} | {raw['p90']:.3f} | {raw['p99']:.3f} | "
        f"{raw['mean']:.3f} |\n"
        f"| TritonClient | {wrapped['p50']:.3f} | {wrapped['p90']:.3f} | {wrapped['p99']:.3f} | "
        f"{wrapped['mean']:.3f} |\n\n"
        f"wrapper / raw p50 = **{overhead['p50_ratio']:.3f}** (goal: at most 1.10).\n\n"
        f"## Dynamic batching ({args.duration:g} s per level, batch 1 per request)\n\n"
        "| concurrency | images/s | p50 (ms) | p99 (ms) | requests | failures |\n"
        f"| --- | --- | --- | --- | --- | --- |\n{rows}\n\n"
        f"throughput at 16 / at 1 = **{speedup:.2f}x** (goal: at least 2x).\n"
    )
    print(json.dumps(result["goals"] | {"p50_ratio": overhead["p50_ratio"], "speedup": speedup}))


if __name__ == "__main__":
    main()
