"""Every CUDA variant of ResNet-18 (224×224, random weights) at batch sizes 1 and 256, one run.

    python benchmarks/cuda_variants.py            # on a GPU machine: the committed result, ~3 min
    python benchmarks/cuda_variants.py --quick    # batch 1 and 2, few iterations: a smoke test
    python benchmarks/cuda_variants.py --device cpu --quick --model simplenet --image-size 16 \\
        --variants eager-fp32,torchscript-fp32,compile-fp32  # a dry run of this script on a CPU

Needs torch with CUDA and torchvision; onnxruntime and matplotlib are optional (without a CUDA
provider the ONNX variants are skipped with the reason before anything is exported; without
matplotlib no PNG). Rows are ranked by device time (CUDA events, input already on the GPU);
end-to-end latency with the host-device copies is reported beside it.

Time budget: compiling with CUDA graphs takes tens of seconds per variant and batch size, so the
measurement windows are short (0.2 s, at most 2.5 s per figure), and the sweeps run in the order
that secures most if the run is cut short: the variants that need no compiling at each batch
size, then the compiled ones. The report is rewritten after every sweep.
Writes cuda_variants.{json,md,png} naming the GPU, with the goals: the best variant at batch 1
at least 4.5x faster than eager fp32, and fp16 channels_last (eager-fp16-cl) at batch 256 at
least 2.2x the throughput of eager fp32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from toolkit.bench.harness import MeasureConfig
from toolkit.bench.report import format_table, write_report
from toolkit.bench.results import BenchReport, BenchRow, rank
from toolkit.bench.run import run_benchmark
from toolkit.log import configure_logging, logger
from toolkit.variants.registry import resolve_variants

BEST_AT_1_TARGET = 4.5
FP16_THROUGHPUT_TARGET = 2.2
ONNX_AT_1_WITHIN = 1.5  # onnx-fp16's device time at batch 1 within 1.5x of compile-fp16-cl's
END_TO_END_SHARE = 0.7  # end-to-end throughput at the large batch over device-only (pinned)


def goal(text: str, value: float | None, target: float, why: str = "") -> dict[str, Any]:
    """A ratio goal; `missed_by` says by what fraction of the target a missed one fell short."""
    passed = value is not None and value >= target
    missed_by = None if passed or value is None else 1 - value / target
    return {
        "goal": text,
        "value": value,
        "target": target,
        "passed": passed,
        "missed_by": missed_by,
        "why": why,
    }


def goals(rows: list[BenchRow], large: int) -> list[dict]:
    """The goals of this benchmark, from the rows measured so far."""

    def row(variant: str, batch_size: int) -> BenchRow | None:
        return next((r for r in rows if (r.variant, r.batch_size) == (variant, batch_size)), None)

    at_1 = [r for r in rows if r.batch_size == 1 and r.speedup_vs_eager_fp32 is not None]
    best = max(at_1, key=lambda r: r.speedup_vs_eager_fp32, default=None)
    fp32, fp16 = row("eager-fp32", large), row("eager-fp16-cl", large)
    return [
        goal(
            f"best variant at batch 1 at least {BEST_AT_1_TARGET:g}x faster than eager fp32"
            + (f" ({best.variant})" if best else ""),
            best.speedup_vs_eager_fp32 if best else None,
            BEST_AT_1_TARGET,
            "no batch-1 rows with eager fp32",
        ),
        goal(
            f"eager fp16 channels_last (eager-fp16-cl) at batch {large}: at least "
            f"{FP16_THROUGHPUT_TARGET:g}x the throughput of eager fp32",
            fp16.best_throughput / fp32.best_throughput if fp32 and fp16 else None,
            FP16_THROUGHPUT_TARGET,
            f"eager-fp32 or eager-fp16-cl did not run at batch {large}",
        ),
        *onnx_and_copy_goals(row, large),
    ]


def onnx_and_copy_goals(row, large: int) -> list[dict]:
    """ONNX Runtime's CUDA provider against the torch variants, and the host copies (through
    pinned buffers) against device-only time; `row(variant, batch)` finds a measured row."""
    compiled, onnx_1 = row("compile-fp16-cl", 1), row("onnx-fp16", 1)
    eager, onnx_large = row("eager-fp16-cl", large), row("onnx-fp16", large)

    def device_p50(r) -> float | None:
        return r.device_latency_ms["p50"] if r and r.device_latency_ms else None

    ratio = None
    if device_p50(compiled) and device_p50(onnx_1):
        ratio = device_p50(compiled) / device_p50(onnx_1)
    share = None
    if eager and eager.device_throughput:
        share = eager.throughput / eager.device_throughput
    return [
        goal(
            f"onnx-fp16 at batch 1: device time within {ONNX_AT_1_WITHIN:g}x of compile-fp16-cl "
            "(compile-fp16-cl time over onnx-fp16 time)",
            ratio,
            1 / ONNX_AT_1_WITHIN,
            "onnx-fp16 or compile-fp16-cl has no device time at batch 1",
        ),
        goal(
            f"onnx-fp16 at batch {large}: at least the throughput of eager-fp16-cl",
            onnx_large.best_throughput / eager.best_throughput if onnx_large and eager else None,
            1.0,
            f"onnx-fp16 or eager-fp16-cl did not run at batch {large}",
        ),
        goal(
            f"eager-fp16-cl at batch {large}: end-to-end throughput (pinned host copies) at "
            f"least {END_TO_END_SHARE:.0%} of device-only",
            share,
            END_TO_END_SHARE,
            f"eager-fp16-cl has no device time at batch {large}",
        ),
    ]


def sweeps(variants: list[str], batch_sizes: list[int]) -> list[tuple[int, list[str], bool]]:
    """(batch size, variants, recheck) in the order that secures most per second if the run is
    cut short: the variants that need no compiling at every batch size, then the compiled ones
    (not measured twice: rebuilding one compiles it again)."""
    compiled = [v for v in variants if v.startswith("compile")]
    plain = [v for v in variants if v not in compiled]
    first = [(b, plain, True) for b in batch_sizes if plain]
    return first + [(b, compiled, False) for b in batch_sizes if compiled]


def merge(report: BenchReport | None, part: BenchReport) -> BenchReport:
    """One report from several sweeps, ranked again over all rows of each batch size."""
    if report is None:
        return part
    settings, new = report.settings, part.settings
    settings["batch_sizes"] = sorted({*settings["batch_sizes"], *new["batch_sizes"]})
    settings["variants"] += [v for v in new["variants"] if v not in settings["variants"]]
    report.results += part.results
    report.skipped += [s for s in part.skipped if s not in report.skipped]
    report.consistency = (report.consistency or []) + (part.consistency or [])
    rank(report.results)
    return report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts (smoke test)")
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results (a temp dir with --quick)"
    )
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    parser.add_argument("--model", default="resnet18", help="a `dlkit train --model` name")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--variants", default="all", help="comma-separated `dlkit bench` variant names"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.quick:
        config = MeasureConfig(warmup=2, iters=5, max_time=1.0)
        out = args.out or Path(tempfile.gettempdir()) / "dlkit-cuda-variants-quick"
    else:
        config = MeasureConfig(warmup=10, warmup_time=2.0, min_time=0.2, max_time=2.5)
        out = args.out or Path(__file__).parent / "results"
    batch_sizes = [1, 2] if args.quick else [1, 256]

    configure_logging()
    names = resolve_variants(args.variants.split(","), args.device)
    report = None
    for batch_size, variants, recheck in sweeps(names, batch_sizes):
        part = run_benchmark(
            model=args.model,
            image_size=args.image_size,
            num_classes=1000,
            variants=variants,
            device=args.device,
            batch_sizes=[batch_size],
            config=config,
            recheck=recheck,
        )
        report = merge(report, part)
        report.command = " ".join(["python benchmarks/cuda_variants.py", *sys.argv[1:]])
        report.goals = goals(report.results, large=batch_sizes[-1])
        try:
            for path in write_report(report, out, stem="cuda_variants"):
                logger.info("wrote %s", path)
        except ImportError as exc:  # matplotlib missing: the JSON and Markdown are written
            logger.info("wrote %s/cuda_variants.json and .md; no PNG (%s)", out, exc)
    gpu = report.environment["gpu"]
    logger.info("GPU: %s", gpu["name"] if gpu else "none (dry run on the CPU)")
    print(format_table(report))


if __name__ == "__main__":
    main()
