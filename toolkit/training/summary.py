"""What a training run reports: the start-up summary, whether the model learnt anything, and
the `TrainSummary` it returns (`dlkit train --json`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# A model has learnt something when its best validation loss is this much below the loss of
# answering every class as equally likely...
CHANCE_LOSS_MARGIN = 0.03
# ... or its best accuracy beats always answering the most common class by this many standard
# errors of that rate.
CHANCE_ACCURACY_ERRORS = 2.0


@dataclass
class TrainSummary:
    """What a training run did (`dlkit train --json` prints `to_dict()`).

    `best_*` describe the epoch of best.pt, chosen by `monitor` (`best_value` is that metric
    there); `max_val_accuracy` is the highest of any epoch, which can be another one when the
    monitor is `val_loss`. `learned` is False when the model does no better than chance."""

    run_dir: str
    best_checkpoint: str | None  # None: a resumed run in a new folder that never beat the best
    last_checkpoint: str
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    final_val_accuracy: float
    epochs_run: int
    epochs_total: int
    stopped_early: bool
    train_seconds: float
    world_size: int
    device: str
    monitor: str = "val_accuracy"
    stop_reason: str = ""
    best_value: float | None = None
    max_val_accuracy: float | None = None
    max_val_accuracy_epoch: int | None = None
    learned: bool = True
    chance_val_loss: float | None = None
    class_weights: list[float] | None = None
    threads: int | None = None
    workers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def describe(self) -> str:
        """The result in two lines of words: which epoch best.pt holds, and why."""
        better = "lowest" if self.monitor.endswith("loss") else "highest"
        value = "" if self.best_value is None else f" {self.best_value:.4f}"
        other = (
            f"val accuracy {self.best_val_accuracy:.4f}"
            if self.monitor.endswith("loss")
            else f"val loss {self.best_val_loss:.4f}"
        )
        text = (
            f"best checkpoint: epoch {self.best_epoch} of {self.epochs_total}, by {better} "
            f"{self.monitor}{value} ({other})"
        )
        if self.max_val_accuracy_epoch not in (None, self.best_epoch):
            text += (
                f"; highest val accuracy {self.max_val_accuracy:.4f} at epoch "
                f"{self.max_val_accuracy_epoch}"
            )
        return f"{text}\n{self.stop_reason} in {self.train_seconds:.1f}s"


def chance_loss(loss_fn: nn.Module, labels: Sequence[int], num_classes: int) -> float:
    """The loss of a model that answers every class as equally likely (ln(classes) for plain
    cross entropy), on `labels`, with the run's own loss (weights, smoothing, focal terms)."""
    target = torch.as_tensor(labels, dtype=torch.int64)
    device = next((b.device for b in loss_fn.buffers()), torch.device("cpu"))
    with torch.no_grad():
        uniform = torch.zeros(len(target), num_classes, device=device)
        return float(loss_fn(uniform, target.to(device)))


def learned(history: Sequence[dict[str, float]], chance: float, labels: Sequence[int]) -> bool:
    """Whether the run beat chance: its best validation loss clearly under `chance`, or its
    best accuracy clearly over always answering the most common class of `labels`."""
    best_loss = min(h["val_loss"] for h in history)
    if best_loss < (1 - CHANCE_LOSS_MARGIN) * chance:
        return True
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64))
    majority = float(counts.max()) / len(labels)
    error = math.sqrt(majority * (1 - majority) / len(labels))
    best_accuracy = max(h["val_accuracy"] for h in history)
    return best_accuracy > majority + CHANCE_ACCURACY_ERRORS * error


def startup_lines(facts: dict[str, Any]) -> list[str]:
    """The start-up summary, one `name: value` line per fact (None values left out)."""
    width = max(len(name) for name in facts)
    return [f"  {name:<{width}}  {value}" for name, value in facts.items() if value is not None]


def class_list(classes: Sequence[str], limit: int = 10) -> str:
    """`3 (cat, dog, fox)`, shortened after `limit` names."""
    shown = ", ".join(classes[:limit]) + (", ..." if len(classes) > limit else "")
    return f"{len(classes)} ({shown})"
