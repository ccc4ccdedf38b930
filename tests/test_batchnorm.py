"""BatchNorm statistics recomputed before validation on small sets: validation, best.pt and
the "learnt nothing" warning describe the weights as they are; resume and seeds stay exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from toolkit.artifacts.checkpoint import load_model, read_checkpoint_file
from toolkit.data import load_split
from toolkit.errors import DlkitError
from toolkit.training.batchnorm import RECOMPUTE_BELOW_STEPS, needs_recompute, recompute_batch_norm
from toolkit.training.config import TrainConfig
from toolkit.training.run import train


def test_recompute_sets_the_statistics_of_the_inputs_and_touches_nothing_else():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten()
    )
    model.train()
    images = torch.randn(40, 1, 6, 6) * 3 + 2
    batches = [images[:16], images[16:32], images[32:]]  # unequal batches weigh by images
    bn = model[1]
    rng = torch.get_rng_state()
    counter = bn.num_batches_tracked.clone()
    recompute_batch_norm(model, batches)
    with torch.no_grad():
        features = [model[0](b).transpose(0, 1).reshape(4, -1) for b in batches]
    weights = [len(b) / len(images) for b in batches]
    mean = torch.cat(features, 1).mean(1)  # the mean of every image's features
    variance = sum(w * f.var(1) for w, f in zip(weights, features, strict=True))
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, variance, atol=1e-4)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout stayed off: no random draws
    assert torch.equal(bn.num_batches_tracked, counter) and bn.momentum == 0.1
    assert model.training and bn.training


def test_only_short_epochs_of_models_with_batch_norm_recompute():
    with_bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert needs_recompute(with_bn, 2) and not needs_recompute(with_bn, RECOMPUTE_BELOW_STEPS)
    assert not needs_recompute(nn.Sequential(nn.Linear(2, 2)), 2)


def reference_accuracy(checkpoint: str) -> float:
    """Validation accuracy of `checkpoint` with BatchNorm statistics recomputed here, another
    way (torch's SWA helper, per-batch averages, on every training image)."""
    model, info = load_model(checkpoint)
    train_images, _ = load_split(info.source, info.preprocessing, "train")
    loader = torch.utils.data.DataLoader(train_images, batch_size=64)
    torch.optim.swa_utils.update_bn((x for x, _ in loader), model)
    model.eval()
    val, _ = load_split(info.source, info.preprocessing, "val")
    with torch.no_grad():
        right = [int(model(x[None]).argmax()) == y for x, y in val]
    return float(np.mean(right))


def small_run(folder, out, **changes) -> TrainConfig:
    options = dict(data=str(folder), epochs=8, workers=0, quiet=True, out=str(out))
    return TrainConfig(**(options | changes))


@pytest.mark.slow
def test_validation_on_a_small_set_describes_the_saved_model(tmp_path, make_shapes):
    """160 small images, 2 steps an epoch: with running averages validation stayed near
    chance while the weights had learnt (0.78 at best, where the same weights scored 0.94)."""
    folder = make_shapes(tmp_path / "shapes")
    summary = train(small_run(folder, tmp_path / "run"))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    best = next(h for h in history if h["epoch"] == summary.best_epoch)
    assert summary.learned
    # best.pt's validation figure is the accuracy its weights really have: one image at most
    # apart from statistics recomputed independently (32 validation images).
    assert abs(best["val_accuracy"] - reference_accuracy(summary.best_checkpoint)) <= 1 / 32
    assert abs(history[-1]["val_accuracy"] - reference_accuracy(summary.last_checkpoint)) <= 1 / 32


@pytest.mark.slow
def test_recomputed_statistics_keep_resume_and_seeds_exact(
    tmp_path, make_shapes, interrupt_after_epoch
):
    folder = make_shapes(tmp_path / "shapes", per_class=40)
    straight = train(small_run(folder, tmp_path / "straight", epochs=4))
    again = train(small_run(folder, tmp_path / "again", epochs=4))

    with interrupt_after_epoch(2), pytest.raises(DlkitError, match="interrupted"):
        train(small_run(folder, tmp_path / "resumed", epochs=4))
    resumed = train(
        small_run(folder, tmp_path / "resumed", epochs=4),
        resume=str(tmp_path / "resumed" / "last.pt"),
    )
    reference = read_checkpoint_file(straight.last_checkpoint)["model_state"]
    for other in (again, resumed):
        state = read_checkpoint_file(other.last_checkpoint)["model_state"]
        assert state.keys() == reference.keys()
        for key in reference:  # weights and the recomputed running statistics alike
            assert torch.equal(state[key], reference[key]), key
