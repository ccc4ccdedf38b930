"""TrainConfig: every setting of a training run, with defaults that work on the embedded digits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from toolkit.artifact import DataSource, Preprocessing
from toolkit.data import DIGITS_IMAGE_SIZE, Augmentation
from toolkit.errors import DlkitError
from toolkit.models import SMALL_MODELS

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "onecycle", "step", "plateau", "none")
AMP_MODES = ("off", "fp16", "bf16")
MONITORS = ("val_accuracy", "val_loss")


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
    workers: int = 0
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
    out: str | None = None
    quiet: bool = False

    def resolved(self) -> TrainConfig:
        """A copy with every `None` default filled in and the choices validated."""
        c = dataclasses.replace(self)
        if c.data:
            c.dataset = None
        small_images = c.data is None or c.model in SMALL_MODELS
        if c.image_size is None:
            c.image_size = DIGITS_IMAGE_SIZE if small_images else 224
        if c.channels is None:
            c.channels = 1 if c.data is None else 3
        if c.crop_pct is None:
            c.crop_pct = 1.0 if c.data is None else 0.875
        if c.hflip is None:
            c.hflip = c.data is not None  # mirrored digits are other digits
        if c.lr is None:
            c.lr = 0.05 if c.optimizer == "sgd" else 2e-3
        for name, value, choices in (
            ("optimizer", c.optimizer, OPTIMIZERS),
            ("scheduler", c.scheduler, SCHEDULERS),
            ("amp", c.amp, AMP_MODES),
            ("monitor", c.monitor, MONITORS),
        ):
            if value not in choices:
                raise DlkitError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
        if c.channels not in (1, 3):
            raise DlkitError(f"channels must be 1 (grayscale) or 3 (RGB), got {c.channels}")
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(c, name) < 1:
                raise DlkitError(f"{name.replace('_', '-')} must be at least 1")
        return c

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
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
