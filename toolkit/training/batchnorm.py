"""Batch-norm statistics that describe the weights being validated.

In evaluation a BatchNorm layer normalises with running averages of the batch statistics it
saw in training (momentum 0.1: roughly the last ten steps, plus what remains of its initial
mean 0 and variance 1). When an epoch has few steps, those steps span several epochs of
fast-changing weights, and validation runs today's weights with stale statistics.

Measured (`benchmarks/batchnorm_small_sets.py`, smallresnet, AMD EPYC, one thread; the same
weights validated both ways): on 160 grayscale 25 px pictures (2 steps an epoch, 15 epochs)
validation with running averages never left chance (0.41-0.53, the run "learnt nothing")
while recomputed statistics gave 0.78; on a 3-channel variant, 0.78 against 0.94, where
momentum 0.5 or 1.0 helped only partly (epoch 8: 0.66 against 0.94, the weights being the
same). The digits at batch 128 (11 steps) validated at chance for 3 epochs (0.10-0.12
against 0.57-0.88); at batch 64 (22 steps) at 0.29 and 0.48 against 0.66 and 0.90 for 2
epochs, agreeing from epoch 6 on. So epochs of fewer than RECOMPUTE_BELOW_STEPS steps (at 50,
under 1% of the running figures, 0.9^50, come from earlier epochs) recompute the statistics
before validating, on up to RECOMPUTE_IMAGES training images: on the digits those agreed with
all 1,437 within two validation images and cost 10-12% of an epoch's time.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

# Epochs with fewer training steps than this recompute the statistics before validating...
RECOMPUTE_BELOW_STEPS = 50
# ... on at most this many training images, spread evenly over the split: plenty for a mean
# and variance per channel, and the pass costs a forward pass over them.
RECOMPUTE_IMAGES = 512


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def needs_recompute(model: nn.Module, steps_per_epoch: int) -> bool:
    """Whether validation should recompute the statistics first (see the module's note)."""
    return steps_per_epoch < RECOMPUTE_BELOW_STEPS and bool(batch_norms(model))


@torch.no_grad()
def recompute_batch_norm(
    model: nn.Module,
    inputs: Iterable[torch.Tensor],
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> None:
    """Set every BatchNorm layer's running mean and variance to the statistics of its inputs
    over all of `inputs` (batches of images, no labels), each layer normalising by its batch
    as in training. The layers' own update does the work: with momentum n/N for a batch of n
    images after N in all, the running figures are the image-weighted mean of the batches'
    (means exact; variances the batches' unbiased ones, within-batch spread). Dropout and the
    like stay in evaluation mode, so no random numbers are drawn; `num_batches_tracked` and
    the momentum are left as they were."""
    layers = batch_norms(model)
    if not layers:
        return
    was_training = model.training
    saved = [(layer.momentum, layer.num_batches_tracked.clone()) for layer in layers]
    model.eval()
    for layer in layers:
        layer.train()
    seen = 0
    try:
        for x in inputs:
            seen += len(x)
            for layer in layers:
                layer.momentum = len(x) / seen  # the first batch replaces the old figures
            with autocast() if autocast else contextlib.nullcontext():
                model(x)
    finally:
        for layer, (momentum, counter) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(counter)
        model.train(was_training)


def statistics_images(train: Dataset, transform, batch_size: int) -> Dataset:
    """Up to RECOMPUTE_IMAGES of the training images, evenly spread, through `transform`
    (the evaluation transform: the pixels validation and deployment see); never a last batch
    of one image, which a layer with one value per channel cannot normalise."""
    count = min(len(train), RECOMPUTE_IMAGES)
    if count % batch_size == 1 and count > 1:
        count -= 1
    picked = sorted({round(i * (len(train) - 1) / max(count - 1, 1)) for i in range(count)})
    return Subset(with_transform(train, transform), picked)


def with_transform(dataset: Dataset, transform) -> Dataset:
    """A shallow copy of `dataset` (or of the dataset under a Subset) that applies
    `transform` instead."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    copied = copy.copy(dataset)
    copied.transform = transform
    return copied
