"""Every CUDA variant of ResNet-18 (224×224, random weights) at batch sizes 1 and 256, one run.

    python benchmarks/cuda_variants.py            # on a GPU machine: the committed result
    python benchmarks/cuda_variants.py --quick    # batch 1 and 2, few iterations: a smoke test

Needs torch with CUDA and torchvision; onnxruntime, tritonclient and matplotlib are optional
(without a CUDA provider the ONNX variant is skipped with the reason; without matplotlib no PNG).
Rows are ranked by device time (CUDA events, input already on the GPU); end-to-end latency with
the host-device copies is reported beside it. Writes cuda_variants.{json,md,png} naming the GPU,
with the goals: the best variant at batch 1 at least 4x faster than eager fp32, and fp16
channels_last (eager-amp-cl) at batch 256 at least 2x the throughput of eager fp32.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from toolkit.bench.harness import MeasureConfig
from toolkit.bench.report import format_table, write_report
from toolkit.bench.run import run_benchmark
from toolkit.log import configure_logging, logger


def goal(text: str, value: float | None, target: float, why: str = "") -> dict:
    passed = value is not None and value >= target
    return {"goal": text, "value": value, "target": target, "passed": passed, "why": why}


def goals(rows: list) -> list[dict]:
    def row(variant: str, batch_size: int):
        return next((r for r in rows if (r.variant, r.batch_size) == (variant, batch_size)), None)

    def throughput(r) -> float:
        return r.best_throughput

    at_1 = [r for r in rows if r.batch_size == 1 and r.speedup_vs_eager_fp32 is not None]
    best = max(at_1, key=lambda r: r.speedup_vs_eager_fp32, default=None)
    fp32, fp16 = row("eager-fp32", 256), row("eager-amp-cl", 256)
    return [
        goal(
            "best variant at batch 1 at least 4x faster than eager fp32"
            + (f" ({best.variant})" if best else ""),
            best.speedup_vs_eager_fp32 if best else None,
            4.0,
            "no batch-1 rows with eager fp32",
        ),
        goal(
            "eager fp16 channels_last at batch 256: at least 2x the throughput of eager fp32",
            throughput(fp16) / throughput(fp32) if fp32 and fp16 else None,
            2.0,
            "eager-fp32 or eager-amp-cl did not run at batch 256",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts (smoke test)")
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results (a temp dir with --quick)"
    )
    parser.add_argument(
        "--device", default="cuda", help=argparse.SUPPRESS
    )  # cpu: dry run of this script
    args = parser.parse_args()
    if args.quick:
        config = MeasureConfig(warmup=2, iters=5, max_time=1.0)
        out = args.out or Path(tempfile.gettempdir()) / "dlkit-cuda-variants-quick"
    else:
        config = MeasureConfig(warmup=20, min_time=0.5, max_time=20.0)
        out = args.out or Path(__file__).parent / "results"

    configure_logging()
    report = run_benchmark(
        model="resnet18",
        image_size=224,
        num_classes=1000,
        variants=["all"],
        device=args.device,
        batch_sizes=[1, 2] if args.quick else [1, 256],
        config=config,
        recheck=True,
    )
    report.command = "python benchmarks/cuda_variants.py" + (" --quick" if args.quick else "")
    report.goals = goals(report.results)
    gpu = report.environment["gpu"]
    logger.info("GPU: %s", gpu["name"] if gpu else "none (dry run on the CPU)")
    try:
        for path in write_report(report, out, stem="cuda_variants"):
            logger.info("wrote %s", path)
    except ImportError as exc:  # matplotlib missing: the JSON and Markdown are already written
        logger.info("wrote %s/cuda_variants.json and .md; no PNG (%s)", out, exc)
    print(format_table(report))


if __name__ == "__main__":
    main()
