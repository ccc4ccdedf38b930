"""Runners: one call — a float32 N×C×H×W numpy batch in, logits out — for every backend.

Evaluation, prediction, parity checks and benchmarks are written once against `Runner`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from toolkit.artifact import ArtifactInfo
from toolkit.errors import DlkitError


class Runner:
    """Base class: checks the input against the artifact's metadata, then runs the backend."""

    info: ArtifactInfo
    name = "runner"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.check_input(batch)
        return self.run(np.ascontiguousarray(batch, dtype=np.float32))

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_input(self, batch: np.ndarray) -> None:
        expected = self.info.preprocessing.input_shape
        if (
            not isinstance(batch, np.ndarray)
            or batch.ndim != 4
            or tuple(batch.shape[1:]) != expected
        ):
            shape = getattr(batch, "shape", type(batch).__name__)
            raise DlkitError(
                f"{self.name} expects a batch of shape (N, {', '.join(map(str, expected))}) "
                f"({expected[0]} channel{'s' if expected[0] > 1 else ''}, "
                f"{expected[1]}×{expected[2]} pixels); got {shape}"
            )
        if not np.issubdtype(batch.dtype, np.floating):
            raise DlkitError(
                f"{self.name} expects float32 input after preprocessing; got {batch.dtype}"
            )


class EagerRunner(Runner):
    """A dlkit checkpoint in eager PyTorch, optionally under autocast and channels_last."""

    name = "eager"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        autocast: str | None = None,
        channels_last: bool = False,
    ):
        import torch

        from toolkit.devices import resolve_device
        from toolkit.training.checkpoint import load_model

        self.device = resolve_device(device)
        self.model, self.info = load_model(path)
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.autocast_dtype = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}[autocast]

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to(self.device, memory_format=self.memory_format)
        enabled = self.autocast_dtype is not None
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled),
        ):
            return self.model(x).float().cpu().numpy()


def open_runner(path: str | os.PathLike, device: str = "cpu", **options) -> Runner:
    """Open any model artifact dlkit understands as a Runner."""
    path = Path(path)
    if not path.exists():
        raise DlkitError(f"model file not found: {path}")
    return EagerRunner(path, device=device, **options)
