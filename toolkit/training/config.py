"""TrainConfig: every setting of a training run, with defaults that work on the embedded digits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.artifacts.metadata import DataSource, Preprocessing
from toolkit.choices import (
    Autocast,
    Dataset,
    Device,
    Loss,
    Monitor,
    Optimizer,
    Scheduler,
    plain,
)
from toolkit.data import DIGITS_IMAGE_SIZE, Augmentation, is_grayscale_folder
from toolkit.errors import DlkitError
from toolkit.training.models import SMALL_MODELS


@dataclass
class TrainConfig:
    """Settings of one training run. `None` means "pick the default for this data and model"
    (see `resolved`)."""

    # data
    dataset: str | None = "digits"
    data: str | None = None
    val_fraction: float = 0.2
    split_seed: int = 0
    image_size: int | None = None
    channels: int | None = None
    crop_pct: float | None = None
    augment: bool = True
    hflip: bool | None = None
    rotation: float = 10.0
    min_crop_scale: float = 0.7
    workers: int | None = None  # None: 0 for in-memory data, else min(4, cores per process)
    pin_memory: bool | None = None
    # model
    model: str = "smallresnet"
    pretrained: bool = False
    weights: str | None = None
    # optimisation
    epochs: int = 15
    batch_size: int = 64
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    loss: str = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: float | list[float] | None = None
    class_weights: str | list[float] = "none"  # "none", "auto" (inverse frequency) or one each
    grad_clip: float | None = None
    amp: str = "off"
    channels_last: bool = False
    # stopping and monitoring
    early_stopping: int = 0
    monitor: str = "val_accuracy"
    min_delta: float = 0.0
    # run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # None: half the usable cores per process (at least one)
    out: str | None = None
    quiet: bool = False

    def resolved(self) -> TrainConfig:
        """A copy with every `None` default filled in and the choices validated."""
        c = dataclasses.replace(self)
        if c.data:
            c.dataset = None
            # Absolute, so the run's checkpoints find their data from any working directory.
            c.data = str(Path(c.data).expanduser().resolve())
        small_images = c.data is None or c.model in SMALL_MODELS
        if c.image_size is None:
            c.image_size = DIGITS_IMAGE_SIZE if small_images else 224
        if c.channels is None:
            # Grayscale folders train on one channel (with ImageNet's RGB statistics on three
            # identical channels they would only cost three times the first layer's work).
            c.channels = 1 if c.data is None or is_grayscale_folder(c.data) else 3
        if c.crop_pct is None:
            c.crop_pct = 1.0 if c.data is None else 0.875
        if c.hflip is None:
            c.hflip = c.data is not None  # mirrored digits are other digits
        if c.lr is None:
            c.lr = 0.05 if c.optimizer == "sgd" else 2e-3
        c.optimizer = Optimizer.parse(c.optimizer, "optimizer")
        c.scheduler = Scheduler.parse(c.scheduler, "scheduler")
        c.amp = Autocast.parse(c.amp, "amp")
        c.monitor = Monitor.parse(c.monitor, "monitor")
        c.loss = Loss.parse(c.loss, "loss")
        c.device = Device.parse(c.device, "device")
        if c.dataset is not None:
            c.dataset = Dataset.parse(c.dataset, "dataset")
        c.check_numbers()
        return c

    def check_numbers(self) -> None:
        """Every numeric setting finite and in range: one clear message instead of a run
        that fails later or quietly learns nothing."""
        ranges = {
            "epochs": (1, 100_000),
            "batch_size": (1, 1_000_000),
            "image_size": (1, 4096),
            "workers": (0, 256),
            "threads": (1, 1024),
            "early_stopping": (0, 100_000),
            "lr": (1e-12, 100.0),
            "weight_decay": (0.0, 10.0),
            "momentum": (0.0, 1.0),
            "warmup_epochs": (0.0, 100_000.0),
            "label_smoothing": (0.0, 0.999),
            "focal_gamma": (0.0, 100.0),
            "min_delta": (0.0, 1e6),
            "val_fraction": (1e-6, 1 - 1e-6),
            "rotation": (0.0, 180.0),
            "min_crop_scale": (0.01, 1.0),
            "crop_pct": (0.05, 1.0),
        }
        if self.grad_clip is not None:
            ranges["grad_clip"] = (1e-12, 1e9)
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or not (low <= value <= high):
                flag = name.replace("_", "-")
                raise DlkitError(f"--{flag} must be a number from {low:g} to {high:g}, got {value}")
        if self.channels not in (1, 3):
            raise DlkitError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        self._check_weights()

    def _check_weights(self) -> None:
        """--focal-alpha and --class-weights: finite, non-negative and not all zero (how many
        there must be is checked against the classes, once the data is read)."""
        if self.class_weights in ("auto", "none"):
            given = [("focal-alpha", self.focal_alpha)]
        elif isinstance(self.class_weights, list):
            given = [("focal-alpha", self.focal_alpha), ("class-weights", self.class_weights)]
        else:
            raise DlkitError(
                f"--class-weights must be auto, none or one weight per class (a,b,c), "
                f"got {self.class_weights!r}"
            )
        for flag, value in given:
            values = value if isinstance(value, list) else [value]
            if value is None:
                continue
            numbers = all(isinstance(v, (int, float)) and 0 <= v <= 1e6 for v in values)
            if not (values and numbers and any(values)):
                raise DlkitError(
                    f"--{flag} takes finite non-negative numbers, not all zero; got {value}"
                )
        if self.focal_alpha is not None and self.loss != Loss.FOCAL:
            raise DlkitError("--focal-alpha applies to --loss focal only")

    @property
    def source(self) -> DataSource:
        return DataSource(self.dataset, self.data, self.val_fraction, self.split_seed)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.default(self.channels, self.image_size, self.crop_pct)

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.augment, self.min_crop_scale, self.hflip, self.rotation)

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
