"""Serving on Triton: the client wrapper's overhead, and what dynamic batching buys, in one run.

Starts its own pip-installed tritonserver (python backend, ONNX Runtime on CPU) serving a
smallresnet for 32x32 grayscale digits (random weights: only speed is measured), then

1. p50 latency of `TritonClient.infer` against raw `tritonclient` gRPC calls building the same
   request, batch 1, in interleaved blocks so machine noise hits both alike (goal: the wrapper
   within 10% of raw);
2. dynamic batching against none at the same concurrency: the model served with batching
   off, and with batching and a queue delay of 0, 100, 500 and 2,000 µs (the package default
   until this run), side by side on one server (`dlkit tune`'s `compare_configs`), at
   concurrency 1, 4 and 16, windows interleaved so that machine noise hits all alike.

    python benchmarks/serving.py [--rounds 10] [--requests 200] [--window 2] [--out DIR]
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
from serving_tune import MODELS, export  # the script beside this one

from toolkit.bench.environment import usable_cores
from toolkit.bench.harness import latency_stats
from toolkit.bench.load import LoadWindows
from toolkit.triton.client import TritonClient
from toolkit.triton.configs import ServingOptions
from toolkit.triton.repository import PackageOptions, default_name, package_artifact
from toolkit.triton.server import TritonServer, free_port
from toolkit.tune.session import MeasureSettings, compare_configs
from toolkit.tune.space import TrialConfig

MODEL = "smallresnet"
_, CHANNELS, IMAGE_SIZE, CLASSES = MODELS["digits"]


def build_repository(onnx: Path, root: Path, serving: ServingOptions | None = None) -> Path:
    """`onnx` packaged as MODEL for the python backend in `root`/repo."""
    options = PackageOptions(backend="python", serving=serving or ServingOptions())
    package_artifact(onnx, root / "repo", MODEL, options=options)
    return root / "repo"


BATCHING = {
    "batching off": ServingOptions(dynamic_batching=False),
    "batching, no queue delay": ServingOptions(max_queue_delay_us=0),
    "batching, 100 µs queue delay": ServingOptions(max_queue_delay_us=100),
    "batching, 500 µs queue delay": ServingOptions(max_queue_delay_us=500),
    "batching, 2,000 µs queue delay": ServingOptions(max_queue_delay_us=2000),
}
LEVELS = (1, 4, 16)


def batching_on_vs_off(onnx: Path, window: float) -> dict:
    """The `BATCHING` configs side by side at each of `LEVELS`."""
    variant = default_name(onnx)
    configs = [TrialConfig(variant, options) for options in BATCHING.values()]
    windows = LoadWindows(window=window, windows=3, max_windows=8)
    trials = compare_configs(onnx, configs, MeasureSettings(LEVELS, windows))
    rows = {}
    for label, trial in zip(BATCHING, trials, strict=True):
        if not trial.ok:
            raise SystemExit(f"{label}: {trial.error}")
        rows[label] = [
            {
                "concurrency": lv.concurrency,
                "throughput": lv.throughput,
                "p50_ms": lv.p50_ms,
                "p99_ms": lv.p99_ms,
                "failures": lv.failures,
                "stable": lv.load.stable,
            }
            for lv in trial.levels
        ]
    off = {r["concurrency"]: r["throughput"] for r in rows["batching off"]}
    ratios = {
        label: {r["concurrency"]: r["throughput"] / off[r["concurrency"]] for r in levels}
        for label, levels in rows.items()
        if label != "batching off"
    }
    return {"configs": {k: v.to_dict() for k, v in BATCHING.items()}, "levels": rows,
            "throughput_over_batching_off": ratios}  # fmt: skip


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
    parser.add_argument("--window", type=float, default=2.0, help="Seconds per load window.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dlkit-serving-") as tmp:
        onnx = export("digits", Path(tmp))  # the same random-weight smallresnet
        repo = build_repository(onnx, Path(tmp))
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        with TritonServer(repo, **ports) as server:
            overhead = raw_vs_wrapper(server.grpc_url, args.rounds, args.requests)
        batching = batching_on_vs_off(onnx, args.window)
    command = "python benchmarks/serving.py " + " ".join(sys.argv[1:])
    at16 = batching["throughput_over_batching_off"]["batching, no queue delay"][16]
    result = {
        "command": command.strip(),
        "machine": f"{platform.machine()}, {usable_cores()} usable cores, Python "
        f"{platform.python_version()}",
        "model": f"{MODEL} {CHANNELS}x{IMAGE_SIZE}x{IMAGE_SIZE}, {CLASSES} classes, ONNX on the "
        "python backend (ONNX Runtime, CPU)",
        "wrapper_overhead": overhead,
        "dynamic_batching": batching,
        "goals": {"wrapper_p50_within_10pct": overhead["p50_ratio"] <= 1.10},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "serving.md").write_text(markdown(result, args))
    print(json.dumps(result["goals"] | {"p50_ratio": overhead["p50_ratio"], "batching_16": at16}))


def markdown(result: dict, args) -> str:
    overhead = result["wrapper_overhead"]
    raw, wrapped = overhead["raw_latency_ms"], overhead["wrapper_latency_ms"]
    batching = result["dynamic_batching"]
    rows = "\n".join(
        f"| {label} | {lv['concurrency']} | {lv['throughput']:.0f}{'' if lv['stable'] else '!'} "
        f"| {lv['p50_ms']:.2f} | {lv['p99_ms']:.2f} | {lv['failures']} |"
        for label, levels in batching["levels"].items()
        for lv in levels
    )
    ratios = "\n".join(
        f"- {label}: " + ", ".join(f"{r:.2f}x at concurrency {c}" for c, r in by_level.items())
        for label, by_level in batching["throughput_over_batching_off"].items()
    )
    return (
        f"# Serving on Triton: wrapper overhead and dynamic batching\n\n"
        f"`{result['command']}` on {result['machine']}\n\n"
        f"Model: {result['model']}; gRPC on 127.0.0.1; pip-installed tritonserver.\n\n"
        f"## TritonClient vs raw tritonclient (batch 1, {args.rounds} interleaved rounds of "
        f"{args.requests} requests each)\n\n"
        "| client | p50 (ms) | p90 (ms) | p99 (ms) | mean (ms) |\n| --- | --- | --- | --- | --- |\n"
        f"| raw tritonclient | {raw['p50']:.3f} | {raw['p90']:.3f} | {raw['p99']:.3f} | "
        f"{raw['mean']:.3f} |\n"
        f"| TritonClient | {wrapped['p50']:.3f} | {wrapped['p90']:.3f} | {wrapped['p99']:.3f} | "
        f"{wrapped['mean']:.3f} |\n\n"
        f"wrapper / raw p50 = **{overhead['p50_ratio']:.3f}** (goal: at most 1.10).\n\n"
        f"## Dynamic batching on against off, same concurrency (requests of one image)\n\n"
        f"Five configs of the same model served side by side on one server, windows of "
        f"{args.window:g} s interleaved until three agree within 10% (at most eight; `!` marks "
        "a level whose windows never agreed).\n\n"
        "| config | concurrency | images/s | p50 (ms) | p99 (ms) | failures |\n"
        f"| --- | --- | --- | --- | --- | --- |\n{rows}\n\n"
        f"Throughput over batching off at the same concurrency:\n\n{ratios}\n"
    )


if __name__ == "__main__":
    main()
