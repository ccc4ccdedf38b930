"""Optimizer and learning-rate schedule factories."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from toolkit.errors import DlkitError


def create_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """sgd (Nesterov momentum), adam or adamw. Biases and norm layers get no weight decay."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise DlkitError(f"unknown optimizer {name!r}; choose sgd, adam or adamw")


@dataclass
class WarmupCosine:
    """LR factor: linear warm-up over `warmup_steps`, then cosine decay to `final` at `total`."""

    warmup_steps: int
    total_steps: int
    final: float = 0.01

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(
            1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        )
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Schedule:
    """A scheduler and when to step it: after every batch, every epoch, or on a metric."""

    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    interval: str  # "step", "epoch" or "metric"


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    monitor_mode: str = "max",
) -> Schedule | None:
    """cosine (with linear warm-up), onecycle, step (×0.1 every third of the run), plateau
    (×0.1 after two epochs without improvement of the monitored metric) or none."""
    total = epochs * steps_per_epoch
    if name == "none":
        return None
    if name == "cosine":
        warmup = min(total - 1, round(warmup_epochs * steps_per_epoch)) if total > 1 else 0
        fn = WarmupCosine(max(warmup, 0), total)
        return Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "step")
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)
        return Schedule(sched, "step")
    if name == "step":
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
        return Schedule(sched, "epoch")
    if name == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=monitor_mode, factor=0.1, patience=2
        )
        return Schedule(sched, "metric")
    raise DlkitError(f"unknown scheduler {name!r}; choose cosine, onecycle, step, plateau or none")
