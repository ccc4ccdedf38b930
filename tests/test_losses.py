"""FocalLoss and cross entropy with label smoothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toolkit.errors import DlkitError
from toolkit.training.losses import FocalLoss, class_weights, create_loss


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(16, 5), torch.randint(0, 5, (16,))


def test_focal_with_gamma_zero_is_cross_entropy(batch):
    logits, target = batch
    assert torch.allclose(FocalLoss(gamma=0)(logits, target), F.cross_entropy(logits, target))


def test_focal_down_weights_easy_examples(batch):
    logits, target = batch
    ce = F.cross_entropy(logits, target, reduction="none")
    focal = FocalLoss(gamma=2, reduction="none")(logits, target)
    p = torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(focal, (1 - p) ** 2 * ce, atol=1e-6)
    assert torch.all(focal <= ce + 1e-7)


def test_focal_alpha_and_class_weights(batch):
    logits, target = batch
    per_sample = FocalLoss(gamma=1, reduction="none")(logits, target)
    alpha = torch.linspace(0.1, 0.9, 5)
    with_alpha = FocalLoss(alpha=alpha.tolist(), gamma=1, reduction="none")(logits, target)
    assert torch.allclose(with_alpha, per_sample * alpha[target])
    assert torch.allclose(
        FocalLoss(alpha=0.25, gamma=1, reduction="sum")(logits, target), 0.25 * per_sample.sum()
    )
    weight = torch.arange(1.0, 6.0)
    weighted = FocalLoss(gamma=0, weight=weight)(logits, target)
    assert torch.allclose(weighted, F.cross_entropy(logits, target, weight=weight))


def test_focal_is_stable_for_huge_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    target = torch.tensor([1, 1])
    loss = FocalLoss(gamma=2)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss.item() > 1000  # the first sample is confidently wrong


def test_focal_rejects_bad_settings():
    with pytest.raises(DlkitError):
        FocalLoss(gamma=-1)
    with pytest.raises(DlkitError):
        FocalLoss(reduction="avg")


def test_create_loss(batch):
    logits, target = batch
    smoothed = create_loss("ce", label_smoothing=0.1)(logits, target)
    assert torch.allclose(smoothed, F.cross_entropy(logits, target, label_smoothing=0.1))
    assert isinstance(create_loss("focal"), FocalLoss)
    with pytest.raises(DlkitError, match="unknown loss"):
        create_loss("hinge")
    with pytest.raises(DlkitError, match="label smoothing"):
        create_loss("focal", label_smoothing=0.1)


def test_class_weights_auto_is_inverse_frequency():
    labels = [0] * 6 + [1] * 2 + [2] * 4
    weights = class_weights("auto", labels, ["a", "b", "c"])
    assert weights == pytest.approx([12 / (3 * 6), 12 / (3 * 2), 12 / (3 * 4)])
    assert class_weights("auto", [0, 1, 0, 1], ["a", "b"]) == [1.0, 1.0]  # balanced: all 1
    assert class_weights("none", labels, ["a", "b", "c"]) is None
    assert class_weights([1, 2.5, 3], labels, ["a", "b", "c"]) == [1.0, 2.5, 3.0]
    with pytest.raises(DlkitError, match=r"--class-weights has 2 values for 3 classes \(a, b, c\)"):
        class_weights([1, 2], labels, ["a", "b", "c"])


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_both_losses_use_the_class_weights(batch, name):
    logits, target = batch
    weight = torch.arange(1.0, 6.0)
    loss = create_loss(name, focal_gamma=0.0, class_weights=weight.tolist())
    assert torch.allclose(loss(logits, target), F.cross_entropy(logits, target, weight=weight))


def test_focal_alpha_reaches_the_loss(batch):
    logits, target = batch
    plain = FocalLoss(gamma=2, reduction="none")(logits, target).mean()
    assert torch.allclose(create_loss("focal", focal_alpha=0.25)(logits, target), 0.25 * plain)
    with pytest.raises(DlkitError, match="--focal-alpha applies to --loss focal"):
        create_loss("ce", focal_alpha=0.25)
