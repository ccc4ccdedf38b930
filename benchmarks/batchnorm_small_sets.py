"""Validation with BatchNorm running averages against recomputed statistics, epoch by epoch.

One training run with the running averages alone (as dlkit validated before it recomputed
statistics for short epochs); after each epoch a copy of the same weights is validated again
with statistics recomputed on the training images (`toolkit.training.batchnorm`). Where the
two columns differ, validation (and best.pt, early stopping, the "learnt nothing" warning)
described stale statistics, not the weights.

    python benchmarks/batchnorm_small_sets.py --data DIR [--batch-size 64] [--epochs 15]
    python benchmarks/batchnorm_small_sets.py              # the embedded digits

`results/batchnorm_shapes_b64.*` ran on the tests' `make_shapes` folder (2 classes x 80
grayscale 25x25 pictures of circles and squares, half PNG, half JPEG).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

from toolkit.cpu import cpu_info
from toolkit.data import build_transform, load_splits
from toolkit.training import batchnorm, run, trainer
from toolkit.training.config import TrainConfig
from toolkit.training.loaders import create_loader


def measure(config: TrainConfig) -> list[dict[str, float]]:
    """Per epoch: validation accuracy and loss with running averages and recomputed."""
    rows: list[dict[str, float]] = []
    evaluate = trainer.Trainer.evaluate
    resolved = config.resolved()

    def both(self, loader=None):
        stale = evaluate(self, loader)
        if loader is None:
            if not hasattr(self, "statistics_loader"):
                splits = load_splits(resolved.source, resolved.preprocessing)
                images = batchnorm.statistics_images(
                    splits.train, build_transform(resolved.preprocessing), resolved.batch_size
                )
                self.statistics_loader = create_loader(images, resolved.batch_size)
            kept = copy.deepcopy(self.model.state_dict())
            batchnorm.recompute_batch_norm(self.model, (x for x, _ in self.statistics_loader))
            fresh = evaluate(self, None)
            self.model.load_state_dict(kept)
            rows.append(
                {
                    "epoch": self.epoch + 1,
                    "steps_per_epoch": len(self.train_loader),
                    "running_accuracy": stale["val_accuracy"],
                    "running_loss": stale["val_loss"],
                    "recomputed_accuracy": fresh["val_accuracy"],
                    "recomputed_loss": fresh["val_loss"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        return stale

    trainer.Trainer.evaluate = both
    run.needs_recompute = lambda model, steps: False  # validate as before: running averages
    try:
        run.train(config)
    finally:
        trainer.Trainer.evaluate = evaluate
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="an image folder (default: the embedded digits)")
    parser.add_argument("--model", default="smallresnet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            data=args.data,
            model=args.model,
            batch_size=args.batch_size,
            epochs=args.epochs,
            quiet=True,
            workers=0,
            out=str(Path(tmp) / "run"),
        )
        rows = measure(config)
    name = Path(args.data).name if args.data else "digits"
    result = {
        "data": name,
        "model": args.model,
        "batch_size": args.batch_size,
        "cpu": cpu_info()[0],
        "threads": 1,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "epochs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"batchnorm_{name}_b{args.batch_size}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Validation: BatchNorm running averages against recomputed statistics ({name})",
        "",
        f"`python benchmarks/batchnorm_small_sets.py{' --data ' + name if args.data else ''} "
        f"--batch-size {args.batch_size} --epochs {args.epochs}` on {result['cpu']}, one "
        f"thread: {args.model}, {rows[0]['steps_per_epoch']} steps an epoch, the same weights "
        "validated both ways.",
        "",
        "| epoch | running acc | recomputed acc | running loss | recomputed loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['epoch']} | {r['running_accuracy']:.3f} | {r['recomputed_accuracy']:.3f} "
        f"| {r['running_loss']:.3f} | {r['recomputed_loss']:.3f} |"
        for r in rows
    ]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
