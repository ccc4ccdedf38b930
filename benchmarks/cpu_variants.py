"""The CPU variants of ResNet-18 (224×224, random weights) at batch sizes 1 and 32, one run.

    python benchmarks/cpu_variants.py            # the committed result: about 5-8 min, 2 cores
    python benchmarks/cpu_variants.py --quick    # batch 1 and 2, few iterations: a smoke test

Writes cpu_variants.{json,md,png}: per batch size the variants ranked with their speed-up
against eager fp32, the environment, eager fp32 measured a second time at the end (do two runs
agree within the reported spread?), and the harness's p50 against torch.utils.benchmark.Timer
on a ~1 ms matmul (goal: within 5%).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from toolkit.bench.harness import MeasureConfig, compare_with_torch_timer
from toolkit.bench.report import format_table, write_report
from toolkit.bench.run import run_benchmark
from toolkit.choices import Device
from toolkit.log import configure_logging, logger
from toolkit.variants.registry import DEFAULT_VARIANTS


def harness_check() -> dict:
    """The harness against Timer on a fixed single-threaded 352×352 matmul (~1 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(352, 352), torch.randn(352, 352)
        check = compare_with_torch_timer(lambda: a @ b, rounds=5)
    finally:
        torch.set_num_threads(threads)
    return {
        "operation": "352×352 fp32 matmul, 1 thread",
        **check,
        "passed": abs(check["ratio"] - 1) <= 0.05,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts (smoke test)")
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results (a temp dir with --quick)"
    )
    args = parser.parse_args()
    if args.quick:
        config = MeasureConfig(warmup=1, iters=3, max_time=1.0)
        out = args.out or Path(tempfile.gettempdir()) / "dlkit-cpu-variants-quick"
    else:
        # Windows of 3 iterations at least: eager bf16 at batch 32 takes seconds per batch on
        # CPUs without native bf16, and the whole run must stay within minutes.
        # max_time is shared by the variants of a batch size: 20 s each, as before.
        budget = 20.0 * len(DEFAULT_VARIANTS[Device.CPU])
        config = MeasureConfig(warmup=3, min_time=0.5, min_window_iters=3, max_time=budget)
        out = args.out or Path(__file__).parent / "results"

    configure_logging()
    check = harness_check()
    report = run_benchmark(
        model="resnet18",
        image_size=224,
        num_classes=1000,
        variants=None,  # the CPU defaults, with the quantized variants once they are registered
        device="cpu",
        batch_sizes=[1, 2] if args.quick else [1, 32],
        config=config,
        recheck=True,
    )
    report.command = "python benchmarks/cpu_variants.py" + (" --quick" if args.quick else "")
    report.extra["harness_check"] = check
    for path in write_report(report, out, stem="cpu_variants"):
        logger.info("wrote %s", path)
    print(format_table(report))


if __name__ == "__main__":
    main()
