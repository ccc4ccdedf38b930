"""The CUDA path on a real GPU: every runner against eager fp32 on the CPU (CUDA graphs fed new
batches one after another), an AMP fp16 training step, peak memory, the out-of-memory message.

Marked `cuda`: skipped where torch sees no GPU (tests/conftest.py); `benchmarks/gpu_check.sh`
runs them on a GPU machine. Small models throughout, so they take well under two minutes there.
"""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from toolkit.artifacts.checkpoint import EagerRunner
from toolkit.bench.environment import PeakMemory
from toolkit.training.loaders import create_loader
from toolkit.training.models import create_model
from toolkit.training.optim import create_optimizer
from toolkit.training.trainer import Trainer
from toolkit.variants.build import build_runner as build_variant
from toolkit.variants.parity import verify_parity
from toolkit.variants.registry import variants
from toolkit.variants.source import Source

pytestmark = pytest.mark.cuda

SIZE, CLASSES, BATCH = 32, 10, 8
# Largest deviation from eager fp32 on the CPU, as a fraction of the largest logit: "fp32" on
# CUDA runs cuDNN's TF32 convolutions by default, autocast keeps activations in fp16 or bf16.
# About ten times what the CPU shows for bf16 and fp16 autocast on this model; a stale CUDA
# graph buffer or a wrong memory format is off by the size of the logits themselves.
TOLERANCE = {"fp32": 1e-2, "fp16": 1e-2, "bf16": 5e-2}
RUNNERS = [
    ("eager-fp32", "fp32"),
    ("eager-amp-cl", "fp16"),
    ("eager-fp16-cl", "fp16"),
    ("eager-bf16-cl", "bf16"),
    ("torchscript-fp32", "fp32"),
    ("compile-fp32", "fp32"),
    ("compile-amp-cl", "fp16"),
    ("compile-fp16-cl", "fp16"),
]


@pytest.fixture(scope="module")
def source(make_model) -> Source:
    """smallresnet with random weights, as `dlkit bench` builds its CUDA variants from it."""
    model, info = make_model("smallresnet", 3, SIZE, CLASSES)
    return Source.from_model(model, info, device="cuda")


def build_runner(source: Source, name: str):
    if name == "eager-bf16-cl":  # not a bench variant on CUDA (fp16 is faster there)
        return EagerRunner(
            model=source.fresh_model(),
            info=source.info,
            device="cuda",
            autocast="bf16",
            channels_last=True,
        )
    return build_variant(variants()[name], source, BATCH)


@pytest.mark.parametrize(("name", "precision"), RUNNERS)
def test_runner_on_cuda_matches_eager_fp32_on_the_cpu_batch_after_batch(source, name, precision):
    # Three different batches one after another, each output held while the next ones run: a
    # CUDA graph that replayed a stale static input, or returned a buffer that the next replay
    # overwrites, fails here.
    reference = EagerRunner(model=source.fresh_model(), info=source.info, device="cpu")
    runner = build_runner(source, name)
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((BATCH, 3, SIZE, SIZE), dtype=np.float32) for _ in range(3)]
    atol = TOLERANCE[precision] * float(np.abs(reference(batches[0])).max())
    report = verify_parity(reference, runner, batches, atol=atol, rtol=TOLERANCE[precision])
    assert report.passed, report.summary()
    held = [runner(b) for b in batches]
    for batch, output in zip(batches, held, strict=True):
        np.testing.assert_allclose(output, reference(batch), atol=atol, rtol=TOLERANCE[precision])
    assert not np.allclose(held[0], held[1], atol=atol)  # the batches really differ


def test_amp_fp16_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model, _ = create_model("smallresnet", 4, 3, 16)
    images, labels = torch.randn(64, 3, 16, 16), torch.randint(0, 4, (64,))
    loader = create_loader(TensorDataset(images, labels), 32, train=True)
    trainer = Trainer(
        model,
        create_optimizer(model, "adamw", 1e-2),
        nn.CrossEntropyLoss(),
        loader,
        loader,
        torch.device("cuda"),
        amp="fp16",
        channels_last=True,
        quiet=True,
    )
    before = trainer.evaluate()["val_loss"]
    for epoch in range(8):
        trainer.epoch = epoch
        trainer.train_epoch()
    after = trainer.evaluate()["val_loss"]
    assert after < 0.7 * before, (before, after)
    assert trainer.scaler.is_enabled() and math.isfinite(trainer.scaler.get_scale())


def test_peak_memory_is_positive_and_grows_with_the_batch():
    model = create_model("smallresnet", 4, 3, 32)[0].cuda().eval()

    def peak(batch_size: int) -> int:
        x = torch.randn(batch_size, 3, 32, 32, device="cuda")
        with PeakMemory("cuda") as peak, torch.inference_mode():
            model(x)
        return peak.bytes

    small, large = peak(8), peak(256)
    assert 0 < small < large


@pytest.fixture
def memory_cap():
    """This process may hold at most 128 MiB of GPU memory during one test."""
    torch.compiler.reset()  # earlier tests' CUDA graphs keep private memory pools until then
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(128 * 2**20 / total)
    yield
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def test_out_of_memory_is_one_line_naming_the_batch_size(dlkit, tmp_path, memory_cap):
    # The first batch alone needs 1024 × 16 × 64 × 64 fp32 activations (256 MiB) in the stem.
    args = ["--model", "smallresnet", "--image-size", "64", "--batch-size", "1024"]
    run = ["--epochs", "1", "--device", "cuda", "--quiet", "--out", tmp_path / "run"]
    result = dlkit("train", *args, *run, expect=1)
    assert result.output.startswith(
        "Error: CUDA ran out of memory at batch size 1024; lower --batch-size"
    )
    assert len(result.output.splitlines()) == 1
