"""Training speed with 1 or 2 intra-op threads, as the machine is and with added load.

The `dlkit train` defaults (smallresnet on the embedded digits, the Trainer's own loaders and
augmentation). Epochs alternate between the thread counts, so machine noise hits both alike; then
the same again while `--load` busy processes (stand-ins for the other jobs of a shared machine)
spin. The figures are median images/s per setting and their ratios.

    python benchmarks/train_threads.py [--epochs 5] [--load 1] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
from train_overhead import build  # the script beside this one

from toolkit.training.config import TrainConfig
from toolkit.training.trainer import Trainer

THREADS = (1, 2)


def spin() -> None:
    while True:
        pass


def trainer(config: TrainConfig) -> Trainer:
    """A Trainer built as `dlkit train` builds it (no run folder)."""
    model, optimizer, train, val = build(config)
    loss = torch.nn.CrossEntropyLoss()
    return Trainer(model, optimizer, loss, train, val, torch.device("cpu"), quiet=True)


def alternate(t: Trainer, epochs: int, label: str) -> dict[int, list[float]]:
    """images/s per thread count, epochs interleaved (after one warm-up epoch each)."""
    speeds: dict[int, list[float]] = {n: [] for n in THREADS}
    for epoch in range(epochs + 1):
        for n in THREADS:
            torch.set_num_threads(n)
            t.epoch = epoch
            speed = t.train_epoch()["images_per_second"]
            if epoch:
                speeds[n].append(speed)
                print(f"{label} epoch {epoch}: {n} thread(s) {speed:.0f} img/s", file=sys.stderr)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="measured epochs per setting")
    parser.add_argument("--load", type=int, default=1, help="busy processes in the loaded phase")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    config = TrainConfig(quiet=True).resolved()
    t = trainer(config)
    loads = {"no added load": os.getloadavg()[0]}
    phases = {"no added load": alternate(t, args.epochs, "no added load")}
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    loaded = f"{args.load} added busy process(es)"
    loads[loaded] = os.getloadavg()[0]
    try:
        phases[loaded] = alternate(t, args.epochs, loaded)
    finally:
        for p in spinners:
            p.kill()

    medians = {phase: {n: statistics.median(s[n]) for n in THREADS} for phase, s in phases.items()}
    result = {
        "command": f"python benchmarks/train_threads.py --epochs {args.epochs} --load {args.load}",
        "what": "dlkit train defaults: smallresnet, embedded digits 32x32, batch 64, augmentation",
        "cpu": platform.processor() or platform.machine(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_average_at_phase_start": loads,
        "torch": str(torch.__version__),
        "images_per_second": {ph: {str(n): v for n, v in s.items()} for ph, s in phases.items()},
        "median_images_per_second": {
            ph: {str(n): v for n, v in m.items()} for ph, m in medians.items()
        },
        "two_over_one": {ph: m[2] / m[1] for ph, m in medians.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_threads.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "".join(
        f"| {ph} | {loads[ph]:.1f} | {m[1]:.0f} | {m[2]:.0f} | {m[2] / m[1]:.2f} |\n"
        for ph, m in medians.items()
    )
    (args.out / "train_threads.md").write_text(
        "# Training speed: 1 vs 2 intra-op threads\n\n"
        f"`{result['command']}` on {result['cpu']}, {result['usable_cores']} usable cores, "
        f"torch {result['torch']}\n\n{result['what']}; epochs alternate between the settings.\n\n"
        "| machine | load average | 1 thread (img/s) | 2 threads (img/s) | 2 / 1 |\n"
        "| --- | --- | --- | --- | --- |\n" + rows
    )
    print(json.dumps(result["two_over_one"]))


if __name__ == "__main__":
    main()
