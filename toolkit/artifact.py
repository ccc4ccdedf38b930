"""What every model dlkit writes carries, so that any artifact can be used on its own.

Plain dataclasses that turn into JSON-able dicts; no torch here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    input_dtype: str = "float32"
    static_batch: int | None = None
    quantization: dict[str, Any] | None = None
    source_checkpoint: str | None = None
    source_sha256: str | None = None
    dlkit_version: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def derive(self, **changes: Any) -> ArtifactInfo:
        """A copy for an artifact made from this one (export, quantization)."""
        return dataclasses.replace(self, **changes)

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
            input_dtype=d.get("input_dtype", "float32"),
            static_batch=d.get("static_batch"),
            quantization=d.get("quantization"),
            source_checkpoint=d.get("source_checkpoint"),
            source_sha256=d.get("source_sha256"),
            dlkit_version=d.get("dlkit_version", ""),
        )


# Where the metadata lives inside each format.
ONNX_METADATA_KEY = "dlkit"
TORCHSCRIPT_EXTRA_FILE = "dlkit.json"


def sniff_format(path: str | os.PathLike) -> str:
    """`checkpoint`, `torchscript` or `onnx`, from the file's content (not only its name)."""
    path = Path(path)
    if not path.is_file():
        raise DlkitError(f"model file not found: {path}")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise DlkitError(f"{path} is a damaged archive: {exc}") from exc
        return "torchscript" if any("/code/" in n for n in names) else "checkpoint"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version), as every ONNX file starts
        return "onnx"
    raise DlkitError(
        f"{path} is not a model file dlkit understands (a dlkit checkpoint, TorchScript or ONNX)"
    )


def read_artifact_info(path: str | os.PathLike) -> ArtifactInfo:
    """The metadata embedded in any artifact dlkit wrote."""
    fmt = sniff_format(path)
    if fmt == "checkpoint":
        from toolkit.training.checkpoint import load_checkpoint

        return load_checkpoint(path).info
    if fmt == "torchscript":
        return load_torchscript(path)[1]
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise DlkitError(f"{path} is not a readable ONNX model: {exc}") from exc
    props = {p.key: p.value for p in model.metadata_props}
    return parse_info(props.get(ONNX_METADATA_KEY), path)


def write_onnx_metadata(path: str | os.PathLike, info: ArtifactInfo) -> None:
    """Store `info` in an ONNX file's `metadata_props`, replacing earlier dlkit metadata."""
    import onnx

    model = onnx.load(str(path))
    for prop in [p for p in model.metadata_props if p.key == ONNX_METADATA_KEY]:
        model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(info.to_dict())
    onnx.save(model, str(path))


@contextlib.contextmanager
def jit_deprecation_silenced() -> Iterator[None]:
    """torch 2.14 marks torch.jit deprecated, but TorchScript is still what Triton's PyTorch
    backend serves; silence only those notices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`torch\.jit\.\w+` is deprecated")
        yield


def load_torchscript(
    path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[Any, ArtifactInfo]:
    """A TorchScript module and the dlkit metadata in its extra files."""
    import torch

    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        with jit_deprecation_silenced():
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as exc:
        raise DlkitError(f"{path} is not a readable TorchScript file: {exc}") from exc
    return module, parse_info(extra[TORCHSCRIPT_EXTRA_FILE], path)


def parse_info(text: str | bytes | None, path: str | os.PathLike) -> ArtifactInfo:
    """Metadata JSON as stored in an artifact; a file without it is refused."""
    if not text:
        raise DlkitError(
            f"{path} carries no dlkit metadata (class names, preprocessing); export it with "
            "`dlkit export` so it can be used on its own"
        )
    return ArtifactInfo.from_dict(json.loads(text))
