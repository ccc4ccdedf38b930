"""Datasets, transforms and loaders: image folders, in-memory arrays and the embedded digits.

Every dataset yields `(float tensor C×H×W, int label)` after the artifact's own preprocessing, so
training, evaluation, calibration and serving all see the same pixels.
"""

from __future__ import annotations

import functools
import io
import os
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from toolkit.artifacts.metadata import DataSource, Preprocessing
from toolkit.errors import DlkitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DATASETS = ("digits",)
DIGITS_IMAGE_SIZE = 32


@dataclass(frozen=True)
class Augmentation:
    """Train-time augmentation; `enabled=False` trains on the evaluation transform."""

    enabled: bool = True
    min_crop_scale: float = 0.7
    hflip: bool = True
    rotation: float = 10.0


# ---------------------------------------------------------------------------------- transforms


def build_transform(pre: Preprocessing, augment: Augmentation | None = None) -> v2.Compose:
    """The transform from a PIL image or a uint8 C×H×W tensor to a normalised float tensor.

    Without `augment` (or with it disabled) this is the evaluation transform: resize, center crop,
    normalise. With it: random resized crop, optional horizontal flip and small rotation.
    """
    size = pre.image_size
    steps: list = [v2.ToImage()]
    if augment is not None and augment.enabled:
        steps.append(v2.RandomResizedCrop(size, scale=(augment.min_crop_scale, 1.0)))
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment.rotation:
            steps.append(v2.RandomRotation(augment.rotation))
    else:
        steps += [v2.Resize(round(size / pre.crop_pct)), v2.CenterCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    return v2.Compose(steps)


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a uint8 C×H×W tensor to `channels` (1 grayscale or 3 RGB)."""
    if image.shape[0] == channels:
        return image
    if channels == 3 and image.shape[0] == 1:
        return image.expand(3, -1, -1)
    if channels == 1 and image.shape[0] == 3:
        return v2.functional.rgb_to_grayscale(image)
    raise DlkitError(f"cannot convert an image with {image.shape[0]} channels to {channels}")


ImageSource = str | os.PathLike | bytes


def load_image(source: ImageSource, channels: int, name: str | None = None) -> Image.Image:
    """Open an image (a file, or its encoded bytes) upright (EXIF orientation applied) as
    grayscale (`channels=1`) or RGB. A corrupt, missing or absurdly large image is a
    DlkitError naming it (`name`, else the path)."""
    name = name or (str(source) if not isinstance(source, bytes) else "the image")
    opened = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened) as img:
                upright = _eight_bit(ImageOps.exif_transpose(img))
                return upright.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError as exc:
        raise DlkitError(f"image not found: {name}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DlkitError(
            f"image too large: {name} (over {Image.MAX_IMAGE_PIXELS:,} pixels; a "
            "decompression bomb?)"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "not an image format it can read" if isinstance(source, bytes) else exc
        raise DlkitError(f"corrupt or unreadable image: {name} ({reason})") from exc


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG, TIFF) scaled to 8 bits: PIL's own conversion clips every value
    above 255, which turns most such images white. Mode "I" does not say its depth: values
    over 255 mean 16 bits."""
    if not img.mode.startswith("I"):
        return img
    pixels = np.asarray(img, dtype=np.int64).clip(0, 65535)
    sixteen = img.mode.startswith("I;16") or pixels.max() > 255
    return Image.fromarray((pixels >> 8 if sixteen else pixels).astype(np.uint8))


def preprocess_images(sources: Sequence[ImageSource], pre: Preprocessing) -> np.ndarray:
    """Images (files or encoded bytes) as one float32 batch, through the evaluation transform:
    the pixels `dlkit eval`, `predict` and the served preprocessing model all see."""
    transform = build_transform(pre)
    return np.stack([transform(load_image(s, pre.channels)).numpy() for s in sources])


def encoded_images(sources: Sequence[ImageSource]) -> np.ndarray:
    """Image files (or bytes) as Triton's BYTES batch: N×1 encoded files, undecoded."""

    def read(source: ImageSource) -> bytes:
        if isinstance(source, bytes):
            return source
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as exc:
            raise DlkitError(f"image not found or unreadable: {source}") from exc

    return np.array([[read(s)] for s in sources], dtype=np.object_)


# ------------------------------------------------------------------------------------ datasets


class ArrayDataset(Dataset):
    """Images already in memory: uint8 arrays N×H×W (grayscale) or N×H×W×C, with labels."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], channels: int, transform=None):
        if images.ndim not in (3, 4):
            raise DlkitError(f"images must be N×H×W or N×H×W×C, got shape {images.shape}")
        if len(images) != len(labels):
            raise DlkitError(f"{len(images)} images but {len(labels)} labels")
        if images.dtype != np.uint8:
            raise DlkitError(f"images must be uint8 (0-255), got {images.dtype}")
        self.images = torch.from_numpy(images if images.ndim == 4 else images[..., None])
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.channels = channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = _to_channels(self.images[index].permute(2, 0, 1), self.channels)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class ImageFileDataset(Dataset):
    """Image files with labels, decoded lazily (the samples of an ImageFolder layout)."""

    def __init__(self, samples: list[tuple[str, int]], channels: int, transform=None):
        self.samples = samples
        self.channels = channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_image(path, self.channels)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def scan_image_folder(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """Find `root/<class>/<image>` files; class names are the sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise DlkitError(f"data folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DlkitError(
            f"no class folders in {root}: expected {root}/<class name>/<image files> "
            "(`dlkit data digits DIR` writes an example)"
        )
    for name in classes:
        if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name):
            raise DlkitError(
                f"class folder {str(root / name)!r} has a newline or control character in its "
                "name; class names end up one per line in labels files: rename it"
            )
        if any(unicodedata.category(ch) == "Cs" for ch in name):  # bytes that are not UTF-8
            raise DlkitError(
                f"class folder {root / os.fsencode(name).decode('utf-8', 'replace')} has a name "
                f"that is not UTF-8 text ({os.fsencode(name)!r}); class names go into model "
                "metadata and Triton's labels: rename it"
            )
    samples = []
    for label, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise DlkitError(
                f"class folder {root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [(str(p), label) for p in files]
    return samples, classes


# Image modes that hold no colour (1-bit, 8/16/32-bit gray, gray with alpha, float gray).
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Enough files to tell a grayscale folder from a colour one, without opening every file.
GRAY_CHECK_FILES = 2000


@functools.lru_cache(maxsize=8)
def is_grayscale_folder(root: str) -> bool:
    """Whether the images under `root` are all stored as grayscale (PNG "L", grayscale
    JPEG, 16-bit PNG, ...), judged from the headers of up to GRAY_CHECK_FILES files spread
    over the folder. A folder that cannot be read is not (training then says why)."""
    try:
        files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError:
        return False
    step = max(1, len(files) // GRAY_CHECK_FILES)
    for path in files[::step]:
        try:
            with Image.open(path) as img:
                if img.mode not in GRAY_MODES:
                    return False
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
            return False
    return bool(files)


def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices into train and validation, per class, deterministically by `seed`."""
    if not 0.0 < val_fraction < 1.0:
        raise DlkitError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)


def load_digits(image_size: int = DIGITS_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 8×8 handwritten digits scikit-learn ships, upscaled to uint8 `image_size` squares."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    big = torch.nn.functional.interpolate(small, size=image_size, mode="bilinear")
    images = big.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    return images, digits.target.astype(np.int64), [str(c) for c in digits.target_names]


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The labels of `dataset`, in order, read without decoding any image."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ArrayDataset):
        return dataset.labels.numpy()
    if isinstance(dataset, ImageFileDataset):
        return np.array([label for _, label in dataset.samples], dtype=np.int64)
    return np.array([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)


@dataclass
class Splits:
    """Train and validation datasets of one data source, with its class names."""

    train: Dataset
    val: Dataset
    classes: list[str]


def load_splits(
    source: DataSource, pre: Preprocessing, augment: Augmentation | None = None
) -> Splits:
    """Build the train (augmented) and validation (evaluation transform) datasets."""
    train_tf, eval_tf = build_transform(pre, augment), build_transform(pre)
    if source.data is None:
        if source.dataset not in DATASETS:
            raise DlkitError(f"unknown dataset {source.dataset!r}; choose from {DATASETS}")
        images, labels, classes = load_digits()
        train_idx, val_idx = stratified_split(labels, source.val_fraction, source.split_seed)
        return Splits(
            Subset(ArrayDataset(images, labels, pre.channels, train_tf), train_idx),
            Subset(ArrayDataset(images, labels, pre.channels, eval_tf), val_idx),
            classes,
        )
    root = Path(source.data)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_samples, classes = scan_image_folder(root / "train")
        val_samples, val_classes = scan_image_folder(root / "val")
        if val_classes != classes:
            raise DlkitError(
                f"{root}/train and {root}/val have different class folders: "
                f"{classes} vs {val_classes}"
            )
    else:
        samples, classes = scan_image_folder(root)
        train_idx, val_idx = stratified_split(
            [label for _, label in samples], source.val_fraction, source.split_seed
        )
        train_samples = [samples[i] for i in train_idx]
        val_samples = [samples[i] for i in val_idx]
    return Splits(
        ImageFileDataset(train_samples, pre.channels, train_tf),
        ImageFileDataset(val_samples, pre.channels, eval_tf),
        classes,
    )


def load_split(source: DataSource, pre: Preprocessing, split: str = "val") -> tuple[Dataset, list]:
    """One split (`train`, `val` or `all`) with the evaluation transform, and the class names."""
    splits = load_splits(source, pre)  # no augmentation: train uses the evaluation transform
    if split == "all":
        return torch.utils.data.ConcatDataset([splits.train, splits.val]), splits.classes
    if split in ("train", "val"):
        return getattr(splits, split), splits.classes
    raise DlkitError(f"unknown split {split!r}; choose train, val or all")


# ------------------------------------------------------------------------ writing digits to disk


def write_digits_folder(
    out: str | os.PathLike, val_fraction: float = 0.2, split_seed: int = 0
) -> dict[str, int]:
    """Write the embedded digits as `out/train/<digit>/*.png` and `out/val/<digit>/*.png`.

    The split is the one `--dataset digits` uses with the same fraction and seed, so training on
    the folder and on the embedded dataset see the same images. Refuses a non-empty `out`.
    """
    from toolkit.files import atomic_path

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DlkitError(f"{out} exists and is not empty; choose a new folder")
    if out.exists():
        out.rmdir()
    images, labels, classes = load_digits()
    train_idx, val_idx = stratified_split(labels, val_fraction, split_seed)
    counts = {}
    with atomic_path(out) as tmp:
        for split, indices in (("train", train_idx), ("val", val_idx)):
            for name in classes:
                (tmp / split / name).mkdir(parents=True)
            for i in indices:
                Image.fromarray(images[i]).save(tmp / split / classes[labels[i]] / f"{i:04d}.png")
            counts[split] = len(indices)
    return counts


def find_images(patterns: Sequence[str]) -> list[str]:
    """Image files from paths, folders (their images, recursively, sorted) and globs, in the
    order given; a pattern that matches nothing is an error naming it."""
    import glob

    found: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif path.is_file():
            matches = [pattern]
        else:
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise DlkitError(f"image not found: {pattern} (no file, folder or glob match)")
        found += matches
    return found
