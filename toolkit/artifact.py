"""What every model dlkit writes carries, so that any artifact can be used on its own.

Plain dataclasses that turn into JSON-able dicts; no torch here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor (evaluation-time transform).

    `crop_pct` < 1 resizes to `image_size / crop_pct` and center-crops `image_size`.
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0

    @classmethod
    def default(cls, channels: int, image_size: int, crop_pct: float = 1.0) -> Preprocessing:
        if channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = (0.5,) * channels, (0.5,) * channels
        return cls(image_size, channels, mean, std, crop_pct)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(d["image_size"]),
            channels=int(d["channels"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            crop_pct=float(d.get("crop_pct", 1.0)),
        )


@dataclass(frozen=True)
class DataSource:
    """Where a model's data came from: the embedded `digits` dataset or an image folder.

    A folder with `train/` and `val/` subfolders is used as is; any other folder is split into
    train and validation per class, deterministically by `split_seed`.
    """

    dataset: str | None = "digits"
    data: str | None = None
    val_fraction: float = 0.2
    split_seed: int = 0

    def describe(self) -> str:
        return self.data if self.data else f"the embedded {self.dataset} dataset"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSource:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass(frozen=True)
class ModelSpec:
    """A model's factory name and constructor arguments: enough to rebuild it."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArtifactInfo:
    """Metadata that travels inside every model file dlkit writes."""

    classes: tuple[str, ...]
    preprocessing: Preprocessing
    model: ModelSpec
    source: DataSource
    format: str = "checkpoint"
    precision: str = "fp32"
    source_checkpoint: str | None = None
    source_sha256: str | None = None
    dlkit_version: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArtifactInfo:
        model = d["model"]
        return cls(
            classes=tuple(d["classes"]),
            preprocessing=Preprocessing.from_dict(d["preprocessing"]),
            model=ModelSpec(model["name"], dict(model.get("kwargs", {}))),
            source=DataSource.from_dict(d.get("source", {})),
            format=d.get("format", "checkpoint"),
            precision=d.get("precision", "fp32"),
            source_checkpoint=d.get("source_checkpoint"),
            source_sha256=d.get("source_sha256"),
            dlkit_version=d.get("dlkit_version", ""),
        )
