"""Classification losses: focal loss and cross entropy with label smoothing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.errors import DlkitError

REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): cross entropy scaled by `(1 - p_t) ** gamma`.

    Computed from `log_softmax`, so it stays finite for large logits.

    Args:
        alpha: balance factor: one float for every class, or one weight per class.
        gamma: focusing parameter; 0 gives (alpha-weighted) cross entropy.
        weight: optional per-class weights, as in `nn.CrossEntropyLoss`.
        reduction: "mean" (weighted by the per-sample weights, like cross entropy), "sum" or
            "none".
    """

    def __init__(
        self,
        alpha: float | Sequence[float] | None = None,
        gamma: float = 2.0,
        weight: torch.Tensor | Sequence[float] | None = None,
        reduction: str = "mean",
    ):
        super().__init__()
        if gamma < 0:
            raise DlkitError(f"focal loss gamma must be >= 0, got {gamma}")
        if reduction not in REDUCTIONS:
            raise DlkitError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.gamma = gamma
        self.reduction = reduction
        self.alpha = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        p = log_p.exp()
        loss = -((1.0 - p).clamp(min=0.0) ** self.gamma) * log_p
        scale = torch.ones_like(loss)
        if self.alpha is not None:
            alpha = self.alpha.to(loss.device)
            scale = scale * (alpha[target] if alpha.ndim else alpha)
        if self.weight is not None:
            scale = scale * self.weight[target]
        loss = loss * scale
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        if self.weight is not None:
            return loss.sum() / self.weight[target].sum()
        return loss.mean()


def create_loss(
    name: str = "ce",
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
    class_weights: Sequence[float] | None = None,
) -> nn.Module:
    """`ce` (cross entropy, optional label smoothing) or `focal`."""
    if not 0.0 <= label_smoothing < 1.0:
        raise DlkitError(f"label smoothing must be in [0, 1), got {label_smoothing}")
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        if label_smoothing:
            raise DlkitError("label smoothing applies to --loss ce only")
        return FocalLoss(gamma=focal_gamma, weight=weight)
    raise DlkitError(f"unknown loss {name!r}; choose ce or focal")
