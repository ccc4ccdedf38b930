"""Trainer overhead: its training epoch against a plain hand-written loop, in one run.

Same model (smallresnet), data (embedded digits, the Trainer's own loaders and augmentation),
optimizer and seed. Epochs alternate between the two loops so machine noise hits both alike;
the figure is the ratio of median epoch times.

    python benchmarks/train_overhead.py [--epochs 6] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from toolkit.training.config import TrainConfig
from toolkit.training.trainer import Trainer


def build(config: TrainConfig):
    """Model, optimizer and loaders exactly as `dlkit train` builds them."""
    from toolkit.data import load_splits
    from toolkit.training.loaders import create_loader
    from toolkit.training.models import create_model
    from toolkit.training.optim import create_optimizer

    torch.manual_seed(config.seed)
    splits = load_splits(config.source, config.preprocessing, config.augmentation)
    model, _ = create_model(config.model, 10, config.channels, config.image_size)
    optimizer = create_optimizer(model, config.optimizer, config.lr, config.weight_decay)
    train = create_loader(splits.train, config.batch_size, train=True, seed=config.seed)
    val = create_loader(splits.val, config.batch_size)
    return model, optimizer, train, val


def plain_epoch(model, optimizer, loader, epoch: int) -> float:
    """The loop people write by hand."""
    model.train()
    loader.sampler.set_epoch(epoch)
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="measured epochs per loop")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    config = TrainConfig(quiet=True).resolved()
    model_a, opt_a, train_a, val_a = build(config)
    model_b, opt_b, train_b, _ = build(config)
    trainer = Trainer(
        model_a, opt_a, torch.nn.CrossEntropyLoss(), train_a, val_a, torch.device("cpu"), quiet=True
    )
    # One warm-up epoch each (allocator, oneDNN primitive caches), then alternate.
    trainer.train_epoch()
    plain_epoch(model_b, opt_b, train_b, 0)
    trainer_times, plain_times = [], []
    for epoch in range(1, args.epochs + 1):
        trainer.epoch = epoch
        start = time.perf_counter()
        trainer.train_epoch()
        trainer_times.append(time.perf_counter() - start)
        plain_times.append(plain_epoch(model_b, opt_b, train_b, epoch))
        print(
            f"epoch {epoch}: trainer {trainer_times[-1]:.2f}s  plain {plain_times[-1]:.2f}s",
            file=sys.stderr,
        )

    ratio = statistics.median(trainer_times) / statistics.median(plain_times)
    result = {
        "command": "python benchmarks/train_overhead.py --epochs " + str(args.epochs),
        "model": config.model,
        "data": "embedded digits, 1438 training images, 32x32 grayscale, batch 64, augmentation on",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "trainer_epoch_s": trainer_times,
        "plain_epoch_s": plain_times,
        "trainer_median_s": statistics.median(trainer_times),
        "plain_median_s": statistics.median(plain_times),
        "trainer_over_plain": ratio,
        "goal": "trainer_over_plain <= 1.05",
        "passed": ratio <= 1.05,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_overhead.json").write_text(json.dumps(result, indent=2) + "\n")

    def row(name: str, times: list[float]) -> str:
        epochs = ", ".join(f"{t:.2f}" for t in times)
        return f"| {name} | {statistics.median(times):.3f} | {epochs} |\n"

    (args.out / "train_overhead.md").write_text(
        "# Trainer overhead vs a hand-written loop\n\n"
        f"`{result['command']}` on {result['cpu']}, {result['threads']} threads, "
        f"torch {result['torch']}\n\n{result['data']}; model {result['model']}.\n\n"
        "| loop | median epoch (s) | epochs (s) |\n| --- | --- | --- |\n"
        + row("Trainer.train_epoch", trainer_times)
        + row("plain loop", plain_times)
        + f"\nTrainer / plain = **{ratio:.3f}** (goal: at most 1.05).\n"
    )
    print(
        json.dumps(
            {k: result[k] for k in ("trainer_median_s", "plain_median_s", "trainer_over_plain")}
        )
    )


if __name__ == "__main__":
    main()
