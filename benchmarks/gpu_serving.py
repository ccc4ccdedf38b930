"""Serving on the GPU with the real commands: package, serve, load, tune (issue 20).

    python benchmarks/gpu_serving.py --out DIR                          # on a GPU machine
    python benchmarks/gpu_serving.py --device cpu --quick --out DIR     # a dry run on a CPU

ResNet-18 at 224x224 (random weights, 1000 classes: only speed is measured) exported to ONNX,
fp16 with fp32 inputs and outputs on CUDA (what `dlkit quantize --mode fp16` writes), or with
`--format torchscript` to TorchScript fp32 (what a machine without onnxruntime-gpu can serve on
its GPU), then:

1. the in-process ceiling: the same file through dlkit's ONNX Runtime runner on the same device
   (CUDA: IO binding, pinned host copies, the numpy batch in and logits out as a client sees
   them), images/s at batch 1, 8 and 32, the best kept;
2. `dlkit package --device DEVICE --backend python` (KIND_GPU instances on CUDA: the python
   backend's runner uses the CUDA provider) and `dlkit serve` on that repository (the pip
   tritonserver), waited for until the model is ready;
3. `dlkit bench --url` at concurrency 1, 4, 16 and 64, one image per request: images/s, p50 and
   p99 per level, each as a fraction of the ceiling (goal: at least 50% at the best level);
4. `dlkit tune --device DEVICE --dry-run` for a short budget: the config it chooses against the
   default (never worse, its changes named).

Writes gpu_serving.json and gpu_serving.md into --out, naming the card; every command's output
is kept beside them (logs/). The dry run: simplenet at 16x16, fp32, short windows.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from toolkit.artifacts import open_runner
from toolkit.bench.environment import describe_environment
from toolkit.bench.harness import MeasureConfig, measure_interleaved, wall_clock_step
from toolkit.triton.server import free_port

MODEL = "gpu_model"
MODEL_SHAPE = ("resnet18", 3, 224, 1000)  # architecture, channels, image size, classes
QUICK_MODEL = ("simplenet", 1, 16, 10)
LEVELS = (1, 4, 16, 64)
CEILING_GOAL = 0.5  # served images/s at the best level over the in-process ceiling


def export(out: Path, quick: bool, fp16: bool, fmt: str = "onnx") -> Path:
    """ResNet-18 (or the dry run's simplenet) as ONNX (fp16 with fp32 IO when asked) or
    TorchScript (fp32)."""
    import torch

    from toolkit.artifacts.metadata import ArtifactInfo, DataSource, Preprocessing
    from toolkit.artifacts.onnx_quantize import quantize_onnx
    from toolkit.choices import QuantizeMode
    from toolkit.training.models import create_model
    from toolkit.variants.export import export_model

    arch, channels, size, classes = (
        ("simplenet", 1, 16, 10) if quick else ("resnet18", 3, 224, 1000)
    )
    torch.manual_seed(0)
    model, spec = create_model(arch, classes, channels, size)
    info = ArtifactInfo(
        classes=tuple(f"class{i}" for i in range(classes)),
        preprocessing=Preprocessing.default(channels, size),
        model=spec,
        source=DataSource(dataset=None, data=str(out / "none")),  # parity on random inputs
    )
    [onnx] = export_model(model, info, out / "export", arch, formats=(fmt,))
    if not fp16 or fmt != "onnx":
        return Path(onnx.path)
    target = out / "export" / f"{arch}-fp16.onnx"
    quantize_onnx(onnx.path, target, QuantizeMode.FP16, None)
    from toolkit.artifacts.onnx import write_info

    write_info(target, info.derive(precision="fp16"))
    return target


def ceiling(artifact: Path, device: str, quick: bool) -> dict:
    """In-process images/s at batch 1, 8 and 32 (windows interleaved); the best is the ceiling."""
    runner = open_runner(artifact, device=device, trust=True)  # made just now by export()
    shape = runner.info.preprocessing.input_shape
    steps, sizes = {}, {}
    for batch_size in (1, 8, 32):
        batch = np.random.default_rng(0).standard_normal((batch_size, *shape), np.float32)
        steps[f"batch {batch_size}"], sizes[f"batch {batch_size}"] = (
            wall_clock_step(runner, batch),
            batch_size,
        )
    config = MeasureConfig(warmup=2, iters=5, max_time=1.0) if quick else MeasureConfig(warmup=5)
    measured = measure_interleaved(steps, config)
    rates = {k: sizes[k] / (m.latency_ms["p50"] / 1e3) for k, m in measured.items()}
    best = max(rates, key=rates.get)
    return {"images_per_s": rates, "best_setting": best, "best": rates[best]}


def dlkit(logs: Path, name: str, *args: str, timeout: float = 600) -> str:
    """Run `dlkit ARGS` (this Python, this tree); its stdout, with both streams kept in logs/."""
    command = [sys.executable, "-m", "toolkit", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    (logs / f"{name}.log").write_text(f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    if result.returncode != 0:
        raise SystemExit(
            f"dlkit {args[0]} failed (exit {result.returncode}): see {logs}/{name}.log"
        )
    return result.stdout


def serve(repo: Path, logs: Path, timeout: float = 300) -> tuple[subprocess.Popen, int]:
    """`dlkit serve` in the background on free ports, once the model is ready; and its gRPC
    port."""
    import tritonclient.grpc as grpcclient

    ports = {kind: free_port() for kind in ("grpc", "http", "metrics")}
    args = [f"--{kind}-port={port}" for kind, port in ports.items()]
    command = [sys.executable, "-m", "toolkit", "serve", "--repo", str(repo), *args]
    command += ["--log-file", str(logs / "tritonserver.log")]
    with open(logs / "serve.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if client.is_model_ready(MODEL):
                return process, ports["grpc"]
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    stop(process)
    raise SystemExit(f"the served model was not ready within {timeout:.0f} s: see {logs}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def served_levels(port: int, logs: Path, levels: tuple[int, ...], duration: float) -> list[dict]:
    out = dlkit(
        logs, "bench_url", "bench", "--url", f"grpc://127.0.0.1:{port}", "--model", MODEL,
        "--concurrency", ",".join(map(str, levels)), "--batch-sizes", "1",
        "--duration", str(duration), "--json",
    )  # fmt: skip
    return json.loads(out)["results"]


def tuned(artifact: Path, device: str, logs: Path, minutes: float, report: Path) -> dict:
    out = dlkit(
        logs, "tune", "tune", str(artifact), "--device", device, "--budget-minutes", str(minutes),
        "--concurrency", "1,16", "--window-seconds", "0.5", "--dry-run", "--json",
        "--report", str(report), timeout=minutes * 60 + 600,
    )  # fmt: skip
    result = json.loads(out)
    baseline, selected = result["baseline"], result["selected"]
    before, after = baseline["config"], selected["config"]
    changes = {k: [before[k], after[k]] for k in after if before.get(k) != after[k]}
    if baseline["variant"] != selected["variant"]:
        changes["variant"] = [baseline["variant"], selected["variant"]]
    rates = {lv["concurrency"]: lv["throughput"] for lv in baseline["levels"]}
    return {
        "default": baseline,
        "selected": selected,
        "changes": changes,
        "never_worse": all(
            lv["throughput"] >= rates.get(lv["concurrency"], 0) for lv in selected["levels"]
        ),
        "report": str(report / "tune.md"),
    }


def run(args: argparse.Namespace) -> dict:
    out, logs = args.out, args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    artifact = export(out, args.quick, fp16=args.device == "cuda", fmt=args.format)
    result: dict = {"environment": describe_environment(args.device), "artifact": str(artifact)}
    result["ceiling"] = ceiling(artifact, args.device, args.quick)
    repo = out / "model_repository"
    dlkit(logs, "package", "package", str(artifact), "--repo", str(repo), "--name", MODEL,
          "--device", args.device, "--backend", "python", "--json")  # fmt: skip
    process, port = serve(repo, logs)
    try:
        levels = served_levels(port, logs, args.levels, args.duration)
    finally:
        stop(process)
    best = result["ceiling"]["best"]
    for level in levels:
        level["fraction_of_ceiling"] = level["throughput"] / best
    result["served"] = levels
    top = max(levels, key=lambda r: r["throughput"])
    value = top["fraction_of_ceiling"]
    result["goals"] = [
        {
            "goal": f"served images/s at the best concurrency ({top['concurrency']}) over the "
            "in-process ceiling of the same file on the same device",
            "value": value,
            "target": CEILING_GOAL,
            "passed": value >= CEILING_GOAL,
            "missed_by": None if value >= CEILING_GOAL else 1 - value / CEILING_GOAL,
            "why": "",
        }
    ]
    if args.tune_minutes > 0:
        result["tune"] = tuned(artifact, args.device, logs, args.tune_minutes, out / "tune")
    return result


def markdown(result: dict) -> str:
    gpu = result["environment"].get("gpu") or {}
    lines = [
        "# Serving on the GPU (benchmarks/gpu_serving.py)",
        "",
        f"Card: {gpu.get('name', 'none (a dry run on the CPU)')}. Artifact: {result['artifact']}.",
        f"In-process ceiling: {result['ceiling']['best']:.1f} images/s "
        f"({result['ceiling']['best_setting']}).",
        "",
        "| clients | images/s | p50 ms | p99 ms | of the ceiling | failures |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["served"]:
        lines.append(
            f"| {r['concurrency']} | {r['throughput']:.1f} | {r['latency_ms']['p50']:.2f} | "
            f"{r['latency_ms']['p99']:.2f} | {r['fraction_of_ceiling']:.0%} | {r['failures']} |"
        )
    goal = result["goals"][0]
    verdict = "met" if goal["passed"] else "NOT met"
    target = f"target at least {goal['target']:.0%}"
    lines += ["", f"Goal: {goal['goal']}: {goal['value']:.1%} ({target}), {verdict}."]
    if "tune" in result:
        tuned = result["tune"]
        changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in tuned["changes"].items())
        lines += [
            "",
            f"`dlkit tune` chose: {changes or 'the default'}; never worse than the default at "
            f"any level: {tuned['never_worse']} ({tuned['report']}).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="a dry run: tiny model, short windows")
    parser.add_argument(
        "--format",
        choices=("onnx", "torchscript"),
        default="onnx",
        help="torchscript needs no onnxruntime-gpu on the machine (fp32)",
    )
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level")
    parser.add_argument("--tune-minutes", type=float, default=1.0, help="0: no tune step")
    args = parser.parse_args()
    args.levels = tuple(int(v) for v in args.levels.split(","))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_serving.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_serving.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
