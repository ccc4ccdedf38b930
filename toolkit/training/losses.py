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
    focal_alpha: float | Sequence[float] | None = None,
) -> nn.Module:
    """`ce` (cross entropy, optional label smoothing) or `focal`; both take per-class weights,
    `focal` also its alpha."""
    if not 0.0 <= label_smoothing < 1.0:
        raise DlkitError(f"label smoothing must be in [0, 1), got {label_smoothing}")
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    if name == "ce":
        if focal_alpha is not None:
            raise DlkitError("--focal-alpha applies to --loss focal only")
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        if label_smoothing:
            raise DlkitError("label smoothing applies to --loss ce only")
        return FocalLoss(alpha=focal_alpha, gamma=focal_gamma, weight=weight)
    raise DlkitError(f"unknown loss {name!r}; choose ce or focal")


def class_weights(
    option: str | Sequence[float], labels: Sequence[int], classes: Sequence[str]
) -> list[float] | None:
    """The loss's per-class weights for `--class-weights`: `none`, `auto` (inverse frequency
    of `labels`, the training split: n / (classes × count), so a balanced split gets all 1) or
    one weight per class, given."""
    if option == "none":
        return None
    if option == "auto":
        counts = torch.bincount(torch.as_tensor(labels), minlength=len(classes)).clamp(min=1)
        return (len(labels) / (len(classes) * counts.double())).tolist()
    return per_class(option, classes, "--class-weights")


def per_class(values: Sequence[float], classes: Sequence[str], flag: str) -> list[float]:
    """`values` as a list, which must hold exactly one number per class."""
    if len(values) != len(classes):
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        raise DlkitError(
            f"{flag} has {len(values)} values for {len(classes)} classes ({shown}): give one "
            "per class, in this order"
        )
    return [float(v) for v in values]
