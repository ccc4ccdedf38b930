"""CPU runtimes side by side, in one run: every CPU variant dlkit builds, against ONNX Runtime
and OpenVINO run by hand on the same static int8 file, with the CPU's matmul rates.

For ResNet-18 (3x224x224, random weights: speed only) and the digits model (smallresnet on the
embedded digits, trained here for a few epochs, so every accuracy gate applies), batch 1, under
one thread and under every usable core:

1. every CPU variant of `dlkit bench --variants all` that runs here, its file variants made and
   verified through the artifact store `dlkit deploy` uses (accuracy, drop and top-1 agreement
   on the digits' validation split);
2. "by hand": the static int8 QDQ file dlkit calibrated, run as a user would run it in a plain
   script: ONNX Runtime with default session options and OpenVINO's `compile_model(path,
   "CPU")` with default properties, both given the thread budget;
3. the windows of all of them taken in turn (dlkit's harness), so a busy machine slows all
   alike; each figure is p50 latency end to end (numpy in, logits out);
4. GOP/s per variant (two ops per multiply-add of the model's convolutions and Linear layers)
   against the rates of 2048x2048 torch matmuls (fp32, bf16, int8 via torch._int_mm) measured
   in the same run under the same budget;
5. which variant `dlkit deploy`'s selection picks among the file variants that passed (lowest
   p50, ties within 5% to the simpler), and its ratio to eager fp32 and to OpenVINO int8 by hand.

Results go to results/cpu_runtimes.{json,md} with the CPU's model and flags.

    python benchmarks/cpu_runtimes.py [--models resnet18,digits] [--min-time 0.5]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from toolkit.artifacts import read_info
from toolkit.artifacts.metadata import ArtifactInfo, DataSource, Preprocessing
from toolkit.artifacts.runner import Runner
from toolkit.bench.environment import describe_environment
from toolkit.bench.harness import MeasureConfig, measure_interleaved, wall_clock_step
from toolkit.bench.run import Job, benchmark_jobs
from toolkit.cpu import cpu_features, cpu_info
from toolkit.deploy.selection import VariantReport, select_variant
from toolkit.devices import usable_cores
from toolkit.log import configure_logging
from toolkit.training.models import create_model
from toolkit.variants.build import build_runner
from toolkit.variants.gate import Gate
from toolkit.variants.registry import file_variants, get_variant, variants
from toolkit.variants.source import Source
from toolkit.variants.verified import VariantSkipped, verdict, verified_artifact

RESULTS = Path(__file__).parent / "results"
MATMUL = 2048
BY_HAND = ("by hand: onnxruntime int8", "by hand: openvino int8")


class HandOnnxRuntime(Runner):
    """A plain ONNX Runtime session, default options but the thread budget."""

    name = "onnxruntime (by hand)"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        self.info = read_info(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, batch):
        return self.session.run(None, {"input": batch})[0]


class HandOpenVino(Runner):
    """OpenVINO's `compile_model(path, "CPU")` with default properties but the thread budget."""

    name = "openvino (by hand)"

    def __init__(self, path: Path, threads: int):
        import openvino as ov

        self.info = read_info(path)
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
        self.request = compiled.create_infer_request()

    def run(self, batch):
        return next(iter(self.request.infer({0: batch}).values()))


def matmul_rates(threads: int, config: MeasureConfig) -> dict[str, float]:
    """GOP/s of 2048x2048 matmuls in fp32, bf16 and int8 under `threads`, interleaved."""
    torch.set_num_threads(threads)
    a, b = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)
    a8, b8 = (torch.randint(-128, 127, (MATMUL, MATMUL), dtype=torch.int8) for _ in range(2))
    ab, bb = a.bfloat16(), b.bfloat16()
    steps = {
        "fp32": wall_clock_step(torch.matmul, a, b),
        "bf16": wall_clock_step(torch.matmul, ab, bb),
        "int8": wall_clock_step(torch._int_mm, a8, b8),
    }
    measured = measure_interleaved(steps, config)
    ops = 2 * MATMUL**3
    return {k: ops / (m.latency_ms["p50"] / 1000) / 1e9 for k, m in measured.items()}


def resnet18_source() -> Source:
    torch.manual_seed(0)
    model, spec = create_model("resnet18", 1000, 3, 224)
    info = ArtifactInfo(
        classes=tuple(f"class{i}" for i in range(1000)),
        preprocessing=Preprocessing.default(3, 224),
        model=spec,
        source=DataSource(dataset=None),
    )
    return Source.from_model(model, info)


def digits_checkpoint(folder: Path, epochs: int) -> Path:
    """smallresnet trained on the embedded digits (`dlkit train`'s defaults, fewer epochs)."""
    out = folder / "digits"
    command = [sys.executable, "-m", "toolkit", "train", "--epochs", str(epochs), "--quiet"]
    subprocess.run([*command, "--out", str(out)], check=True)
    return out / "best.pt"


def measure_model(name: str, source: Source, threads: int, config: MeasureConfig) -> dict:
    """Every CPU variant and the two by-hand runs of `source`, at batch 1 under `threads`."""
    source.threads = threads
    cpu_variants = [v for v in variants().values() if not v.cuda_only]
    jobs = [Job(v.name, lambda b, v=v: build_runner(v, source, b)) for v in cpu_variants]
    qdq = verified_artifact(get_variant("onnx-int8-static"), source).path
    jobs += [
        Job(BY_HAND[0], lambda b: HandOnnxRuntime(qdq, threads)),
        Job(BY_HAND[1], lambda b: HandOpenVino(qdq, threads)),
    ]
    report = benchmark_jobs(jobs, [1], "cpu", threads, config)
    rows = {r.variant: r for r in report.results}
    ops = 2 * source.profile().macs
    table = {}
    for label, row in rows.items():
        p50 = row.latency_ms["p50"]
        table[label] = {
            "p50_ms": p50,
            "stable": row.stable,
            "gops": ops / (p50 / 1000) / 1e9,
            "vs_eager": rows["eager-fp32"].latency_ms["p50"] / p50,
        }
    for label, entry in table.items():
        entry |= _gate(label, source)
    skipped = {s.variant: s.reason for s in report.skipped}
    return {
        "model": name,
        "threads": threads,
        "ops_per_image": ops,
        "variants": table,
        "skipped": skipped,
        "selected": _selected(table),
        "environment": report.environment,
    }


def _gate(label: str, source: Source) -> dict:
    """Accuracy figures of a file variant (where the model has validation data)."""
    variant = file_variants().get(label)
    if variant is None:
        return {}
    try:
        found = verdict(verified_artifact(variant, source), source, 1.0)
    except VariantSkipped:
        return {}
    keys = ("accuracy", "accuracy_drop_points", "drop_ci_points", "top1_agreement", "note")
    return {"gate": str(found["gate"])} | {k: found[k] for k in keys if k in found}


def _selected(table: dict) -> dict:
    """What deploy's selection rule picks among the file variants measured and passed."""
    reports = []
    for label, entry in table.items():
        variant = file_variants().get(label)
        if variant is None or not entry.get("gate", "passed").startswith("passed"):
            continue
        report = VariantReport.of(variant, "cpu")
        report.gate = Gate.passed()
        report.latency_ms, report.throughput = {"p50": entry["p50_ms"]}, 1000 / entry["p50_ms"]
        reports.append(report)
    chosen = select_variant(reports, "latency")
    p50 = table[chosen.name]["p50_ms"]
    hand = table.get(BY_HAND[1], {}).get("p50_ms")
    return {
        "name": chosen.name,
        "vs_eager": table["eager-fp32"]["p50_ms"] / p50,
        "vs_openvino_by_hand": hand / p50 if hand else None,
        "vs_best_by_hand": min(table[h]["p50_ms"] for h in BY_HAND if h in table) / p50,
    }


def markdown(results: dict) -> str:
    cpu = results["cpu"]
    lines = [
        "# CPU runtimes, batch 1",
        "",
        f"`{results['command']}`",
        "",
        f"CPU: {cpu['model']}; flags that decide the kernels: {', '.join(cpu['flags']) or 'none'}"
        f"; usable cores {results['cores']}. Python {platform.python_version()}, "
        f"{', '.join(f'{k} {v}' for k, v in results['versions'].items())}.",
        "",
        "One run; each model's variants measured with their windows interleaved under each "
        "thread budget. p50 ms end to end; GOP/s = 2 x multiply-adds of one image / p50; "
        "matmul rates from 2048x2048 torch matmuls in the same run and budget. `!` = windows "
        "did not settle.",
    ]
    for run in results["runs"]:
        rates = run["matmul_gops"]
        lines += [
            "",
            f"## {run['model']}, {run['threads']} thread(s)",
            "",
            f"{run['ops_per_image'] / 1e9:.2f} GOP per image; matmul rates: fp32 "
            f"{rates['fp32']:.0f}, bf16 {rates['bf16']:.0f}, int8 {rates['int8']:.0f} GOP/s.",
            "",
            "| variant | p50 ms | vs eager fp32 | GOP/s | accuracy | drop (points, 95% CI) |"
            " top-1 agreement |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        ordered = sorted(run["variants"].items(), key=lambda kv: kv[1]["p50_ms"])
        for label, e in ordered:
            ci = e.get("drop_ci_points")
            drop = f"{e['accuracy_drop_points']:.2f} ({ci[0]:.2f} to {ci[1]:.2f})" if ci else ""
            acc = f"{e['accuracy']:.4f}" if e.get("accuracy") is not None else ""
            agree = f"{e['top1_agreement']:.4f}" if e.get("top1_agreement") is not None else ""
            mark = "" if e["stable"] else " !"
            lines.append(
                f"| {label} | {e['p50_ms']:.3f}{mark} | {e['vs_eager']:.2f}x | {e['gops']:.0f} "
                f"| {acc} | {drop} | {agree} |"
            )
        s = run["selected"]
        by_hand = s["vs_openvino_by_hand"]
        lines += [
            "",
            f"deploy's selection: **{s['name']}**, {s['vs_eager']:.2f}x eager fp32, "
            + (f"{by_hand:.2f}x OpenVINO int8 by hand, " if by_hand else "")
            + f"{s['vs_best_by_hand']:.2f}x the best run by hand (>1: faster).",
        ]
        if run["skipped"]:
            lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in run["skipped"].items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet18,digits")
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--max-time", type=float, default=240.0)  # all variants together
    parser.add_argument("--digits-epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    configure_logging(1)
    config = MeasureConfig(min_time=args.min_time, max_time=args.max_time)
    budgets = sorted({1, usable_cores()})
    runs = []
    with tempfile.TemporaryDirectory(prefix="cpu-runtimes-") as tmp:
        for model in args.models.split(","):
            if model == "resnet18":
                source = resnet18_source()
            else:
                checkpoint = digits_checkpoint(Path(tmp), args.digits_epochs)
                source = Source.from_checkpoint(checkpoint)
            for threads in budgets:
                run = measure_model(model, source, threads, config)
                run["matmul_gops"] = matmul_rates(threads, config)
                runs.append(run)
    model_name, flags = cpu_info()
    results = {
        "command": "python benchmarks/cpu_runtimes.py " + " ".join(sys.argv[1:]),
        "cpu": {
            "model": model_name,
            "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
            "features": cpu_features().to_dict(),
        },
        "cores": usable_cores(),
        "versions": describe_environment("cpu")["versions"] | {"openvino": _version("openvino")},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_runtimes.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "cpu_runtimes.md").write_text(markdown(results))
    print(markdown(results))


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)


if __name__ == "__main__":
    main()
