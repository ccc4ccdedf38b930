"""What every model dlkit writes carries, so that any artifact can be used on its own.

Plain dataclasses that turn into JSON-able dicts and back; no torch here. Metadata read from a
file is data from outside: `ArtifactInfo.from_dict` checks every field and turns anything
missing or mistyped into one DlkitError.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from toolkit.artifacts.schema import MAX_CLASS_NAME, MAX_IMAGE_SIZE, metadata_problems
from toolkit.choices import Dataset, Format, Precision, plain
from toolkit.errors import DlkitError

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

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DlkitError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise DlkitError(f"image size must be between 1 and {MAX_IMAGE_SIZE} pixels")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DlkitError(f"mean and std need one value per channel ({self.channels})")
        values = (*self.mean, *self.std, self.crop_pct)
        if not all(math.isfinite(v) for v in values) or min(self.std) <= 0:
            raise DlkitError("mean must be finite and std positive")
        if not 0.05 <= self.crop_pct <= 1.0:
            raise DlkitError(f"crop_pct must be between 0.05 and 1, got {self.crop_pct}")

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
    """Where a model's data came from: the embedded `digits` dataset or an image folder
    (recorded as an absolute path, so the model finds it from any working directory).

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


def check_class_names(classes: tuple[str, ...] | list[str]) -> None:
    """Class names end up one per line in Triton's labels.txt and in reports: refuse names
    that would shift every label (newlines, control characters) or that are absurd."""
    if len(classes) < 2:
        raise DlkitError(f"a classifier needs at least two classes, got {len(classes)}")
    for name in classes:
        if not isinstance(name, str) or not name.strip():
            raise DlkitError(f"class names must be non-empty text, got {name!r}")
        # splitlines() also breaks at \x85, \u2028, \u2029: anything that would make
        # labels.txt one line longer counts as a control character here.
        control = any(ord(ch) < 32 or ord(ch) == 127 for ch in name) or len(name.splitlines()) != 1
        if len(name) > MAX_CLASS_NAME or control:
            raise DlkitError(
                f"class name {name[:40]!r} has control characters or is longer than "
                f"{MAX_CLASS_NAME} characters; rename that class folder"
            )
    if len(set(classes)) != len(classes):
        raise DlkitError("class names must be unique")


@dataclass(frozen=True)
class ArtifactInfo:
    """Metadata that travels inside every model file dlkit writes."""

    classes: tuple[str, ...]
    preprocessing: Preprocessing
    model: ModelSpec
    source: DataSource
    format: str = Format.CHECKPOINT  # a registered format's name
    precision: Precision = Precision.FP32
    input_dtype: str = "float32"
    static_batch: int | None = None
    quantization: dict[str, Any] | None = None
    source_checkpoint: str | None = None
    source_sha256: str | None = None
    dlkit_version: str = ""

    def __post_init__(self) -> None:
        check_class_names(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def derive(self, **changes: Any) -> ArtifactInfo:
        """A copy for an artifact made from this one (export, quantization)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArtifactInfo:
        """Parse stored metadata, every field checked against the schema first (`schema.py`);
        DlkitError names each field that is wrong."""
        choices = {"precision": tuple(Precision), "dataset": tuple(Dataset)}
        problems = metadata_problems(d, {k: tuple(map(str, v)) for k, v in choices.items()})
        if problems:
            raise DlkitError("; ".join(problems))
        model = d["model"]
        static = d.get("static_batch")
        return cls(
            classes=tuple(d["classes"]),
            preprocessing=Preprocessing.from_dict(d["preprocessing"]),
            model=ModelSpec(str(model["name"]), dict(model.get("kwargs", {}))),
            source=DataSource.from_dict(d.get("source", {})),
            format=_format_name(d.get("format", Format.CHECKPOINT)),
            precision=Precision(d.get("precision", "fp32")),
            input_dtype=str(d.get("input_dtype", "float32")),
            static_batch=None if static is None else int(static),
            quantization=d.get("quantization"),
            source_checkpoint=d.get("source_checkpoint"),
            source_sha256=d.get("source_sha256"),
            dlkit_version=str(d.get("dlkit_version", "")),
        )


def _format_name(value: Any) -> str:
    """A format name as stored: short plain text (whether dlkit knows it is asked when the
    artifact is used, since formats are plugins)."""
    if not isinstance(value, str) or not 0 < len(value) <= 40 or not value.isprintable():
        raise ValueError(f"format must be a short name, got {str(value)[:40]!r}")
    return value


def parse_info(text: str | bytes | dict | None, path: str | os.PathLike) -> ArtifactInfo:
    """Metadata as stored in an artifact (JSON text or a dict); a file without it, or with
    metadata that is not what dlkit writes, is refused with one message."""
    if not text:
        raise DlkitError(
            f"{path} carries no dlkit metadata (class names, preprocessing); export it with "
            "`dlkit export` so it can be used on its own"
        )
    try:
        data = text if isinstance(text, dict) else json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return ArtifactInfo.from_dict(data)
    except DlkitError as exc:
        raise DlkitError(
            f"{path} has dlkit metadata that is not what dlkit writes ({exc}); re-export it "
            "from its checkpoint with `dlkit export`"
        ) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)[:200]
        raise DlkitError(
            f"{path} has dlkit metadata that is malformed ({what}); re-export it from its "
            "checkpoint with `dlkit export`"
        ) from None
