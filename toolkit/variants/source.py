"""The model variants are made from: fp32 weights on the CPU, their metadata and identity, and
the data every variant is made and judged with (calibration inputs, parity batches, the
validation split and the eager model's answers on it), each prepared once.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from toolkit.artifacts.checkpoint import EagerRunner, load_model
from toolkit.artifacts.format_plugin import ModelProfile
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.errors import DlkitError
from toolkit.evaluate import predict_dataset
from toolkit.files import sha256_file
from toolkit.log import logger
from toolkit.variants.parity import PARITY_BATCH_SIZES, parity_batches
from toolkit.variants.quantize import (
    DEFAULT_CALIBRATION_SAMPLES,
    calibration_samples,
    calibration_shortfall,
)
from toolkit.variants.store import ArtifactStore


@dataclass
class Source:
    """An fp32 model and what its variants are made and judged with.

    `sha256` identifies the weights (a checkpoint's file hash, or a hash of the weights of an
    in-memory model): with the variant, it keys the artifact store.
    """

    model: nn.Module
    info: ArtifactInfo
    sha256: str
    device: str = "cpu"
    threads: int | None = None
    store: ArtifactStore | None = None
    calibration_count: int | None = None  # None: up to DEFAULT_CALIBRATION_SAMPLES
    calibrated_on: str = ""
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **options: Any) -> Source:
        from toolkit import __version__

        model, info = load_model(path)
        sha = sha256_file(path)
        info = info.derive(
            source_checkpoint=str(Path(path).resolve()),
            source_sha256=sha,
            dlkit_version=__version__,
        )
        return cls(model, info, sha, **options)

    @classmethod
    def from_model(cls, model: nn.Module, info: ArtifactInfo, **options: Any) -> Source:
        """An in-memory model (say, random weights for a speed benchmark), identified by a
        hash of its weights and metadata."""
        digest = hashlib.sha256(info.to_json().encode())
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return cls(model.eval(), info, digest.hexdigest(), **options)

    def artifact_store(self) -> ArtifactStore:
        if self.store is None:
            self.store = ArtifactStore()
        return self.store

    def fresh_model(self) -> nn.Module:
        """A private copy: runners move models and change their memory format in place."""
        return copy.deepcopy(self.model)

    def reference(self) -> EagerRunner:
        """The eager fp32 model every variant is compared with."""
        return EagerRunner(model=self.model, info=self.info)

    def parity_batches(self) -> tuple[list[np.ndarray], str]:
        if "parity" not in self._cache:
            self._cache["parity"] = parity_batches(self.info, PARITY_BATCH_SIZES)
        return self._cache["parity"]

    def example(self) -> torch.Tensor:
        """A batch of two real (or seeded random) inputs, for exporters: a batch of at least
        two keeps the batch dimension dynamic."""
        batches, _ = self.parity_batches()
        return torch.from_numpy(np.concatenate(batches)[:2])

    def options(self, fmt: str) -> dict[str, Any]:
        """Export options for format `fmt` (the artifact store keeps defaults only)."""
        return {}

    def calibration(self) -> np.ndarray:
        """Calibration inputs: `calibration_count` of the model's own training images (None:
        up to DEFAULT_CALIBRATION_SAMPLES, all there are if fewer), else, when the model has
        no training images here, seeded random inputs, which keep speed right but not
        accuracy (said, and recorded in `calibrated_on`). A count asked for that the data
        cannot give is an error."""
        if "calibration" not in self._cache:
            count = self.calibration_count
            try:
                samples = calibration_samples(self.info, count)
                shortfall = calibration_shortfall(len(samples), count)
                self.calibrated_on = shortfall or f"{len(samples)} training images"
            except DlkitError as exc:
                if count is not None:
                    raise
                logger.warning(
                    "warning: calibrating int8 variants on random inputs (%s): their speed is "
                    "right, their accuracy is not measured on real data",
                    exc,
                )
                shape = (DEFAULT_CALIBRATION_SAMPLES, *self.info.preprocessing.input_shape)
                samples = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
                self.calibrated_on = f"{len(samples)} random inputs (no training images: {exc})"
            self._cache["calibration"] = samples
        return self._cache["calibration"]

    def validation(self) -> Dataset | None:
        """The validation split, or None when the model has no data here (said once)."""
        if "validation" not in self._cache:
            from toolkit.data import load_split

            try:
                dataset, _ = load_split(self.info.source, self.info.preprocessing, "val")
                self._cache["validation"] = dataset if len(dataset) else None
            except DlkitError as exc:
                if self.info.source.data or self.info.source.dataset:
                    logger.warning("warning: no validation data to measure accuracy on: %s", exc)
                self._cache["validation"] = None
        return self._cache["validation"]

    def reference_answers(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The eager model's predicted classes on the validation split, and the labels."""
        if "answers" not in self._cache:
            dataset = self.validation()
            answers = None
            if dataset is not None:
                logits, labels = predict_dataset(self.reference(), dataset)
                answers = (logits.argmax(1), labels)
            self._cache["answers"] = answers
        return self._cache["answers"]

    def profile(self) -> ModelProfile:
        """The share of multiply-adds in Linear layers, from one forward pass of one input."""
        if "profile" not in self._cache:
            self._cache["profile"] = model_profile(self.model, self.info)
        return self._cache["profile"]


def model_profile(model: nn.Module, info: ArtifactInfo) -> ModelProfile:
    """Count the multiply-adds of convolutions and Linear layers on one input."""
    macs = {"conv": 0, "linear": 0}

    def count(module: nn.Module, _inputs, output) -> None:
        if isinstance(module, nn.Linear):
            macs["linear"] += module.in_features * output.numel()
        elif isinstance(module, nn.modules.conv._ConvNd):
            per_output = module.in_channels // module.groups * int(np.prod(module.kernel_size))
            macs["conv"] += per_output * output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *info.preprocessing.input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    total = macs["conv"] + macs["linear"]
    return ModelProfile(linear_share=macs["linear"] / total if total else 0.0, macs=total)
