"""The schema of stored dlkit metadata, checked once, when it is read.

Metadata comes from files (ONNX `metadata_props`, TorchScript extra files, checkpoints, served
configs): data from outside. `metadata_problems(d)` says what is wrong with each field, one
phrase per field ("source.split_seed: must be a whole number from 0 to 4294967295, got -1"),
before anything is built from it, so that no later step meets an int where a path belongs, a
string where a record belongs, or an image size that allocates tens of gigabytes. Fields dlkit
does not know are left alone (a newer dlkit may add some).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

MAX_IMAGE_SIZE = 4096
MAX_RESIZE = 8192  # image_size / crop_pct: the size images are resized to before the crop
MAX_CLASS_NAME = 200
MAX_CLASSES = 100_000
MAX_BATCH = 2**31 - 1
MAX_SEED = 2**32 - 1
MAX_TEXT = 4096
INPUT_DTYPES = ("float32", "float16", "bfloat16")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FORMAT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")

Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


def whole(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is int and low <= value <= high:
            return None
        return f"must be a whole number from {low} to {high}, got {_shown(value)}"

    return check


def number(low: float, high: float, *, above: bool = False) -> Check:
    def check(value: Any) -> str | None:
        real = type(value) in (int, float) and math.isfinite(value)
        if real and (value > low if above else value >= low) and value <= high:
            return None
        bound = f"more than {low:g}" if above else f"from {low:g}"
        return f"must be a number {bound} to {high:g}, got {_shown(value)}"

    return check


def text(limit: int = MAX_TEXT, pattern: re.Pattern | None = None) -> Check:
    def check(value: Any) -> str | None:
        fits = isinstance(value, str) and 0 < len(value) <= limit
        if fits and (pattern is None or pattern.fullmatch(value)):
            return None
        return f"must be text of at most {limit} characters, got {_shown(value)}"

    return check


def one_of(values: tuple) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value in values:
            return None
        return f"must be one of {', '.join(map(str, values))}, got {_shown(value)}"

    return check


def optional(inner: Check) -> Check:
    return lambda value: None if value is None else inner(value)


def numbers(count: int | None, positive: bool = False) -> Check:
    def check(value: Any) -> str | None:
        finite = isinstance(value, (list, tuple)) and all(
            type(v) in (int, float) and math.isfinite(v) and (v > 0 or not positive) for v in value
        )
        if finite and (count is None or len(value) == count):
            return None
        what = f"{'' if count is None else f'{count} '}finite {'positive ' if positive else ''}"
        return f"must be a list of {what}numbers, got {_shown(value)}"

    return check


def record(value: Any, fields: dict[str, tuple[Check, bool]], where: str) -> list[str]:
    """Problems of a dict with `fields` (name -> (check, required))."""
    if not isinstance(value, dict):
        return [f"{where}: must be a record (a JSON object), got {_shown(value)}"]
    problems = []
    for name, (check, required) in fields.items():
        if name not in value:
            if required:
                problems.append(f"{where}.{name}: missing")
            continue
        problem = check(value[name])
        if problem:
            problems.append(f"{where}.{name}: {problem}")
    return problems


def metadata_problems(data: Any, choices: dict[str, tuple]) -> list[str]:
    """What is wrong with stored ArtifactInfo `data`, one phrase per field. `choices` gives
    the allowed values of "precision" and "dataset" (from toolkit.choices)."""
    top = {
        "classes": (_classes, True),
        "preprocessing": (lambda v: None, True),
        "model": (lambda v: None, True),
        # a short name: formats are plugins, so whether this dlkit knows it is asked by
        # whatever opens the artifact (one message there, too)
        "format": (text(40, _FORMAT_NAME), False),
        "precision": (one_of(choices["precision"]), False),
        "input_dtype": (one_of(INPUT_DTYPES), False),
        "static_batch": (optional(whole(1, MAX_BATCH)), False),
        "quantization": (optional(_quantization), False),
        "source_checkpoint": (optional(text()), False),
        "source_sha256": (optional(text(64, _SHA256)), False),
        "dlkit_version": (lambda v: None if isinstance(v, str) and len(v) <= 100 else
                          f"must be text, got {_shown(v)}", False),
    }  # fmt: skip
    problems = [p.removeprefix("metadata.") for p in record(data, top, "metadata")]
    if not isinstance(data, dict):
        return problems
    if "preprocessing" in data:
        problems += _preprocessing(data["preprocessing"])
    if "model" in data:
        model = {"name": (text(100), True), "kwargs": (_kwargs, False)}
        problems += record(data["model"], model, "model")
    if "source" in data:
        source = {
            "dataset": (optional(one_of(choices["dataset"])), False),
            "data": (optional(text()), False),
            "val_fraction": (number(0, 1, above=True), False),
            "split_seed": (whole(0, MAX_SEED), False),
        }
        problems += record(data["source"], source, "source")
        if isinstance(data["source"], dict) and data["source"].get("val_fraction") == 1:
            problems.append("source.val_fraction: must be less than 1 (some images train)")
    return problems


def _preprocessing(value: Any) -> list[str]:
    fields = {
        "image_size": (whole(1, MAX_IMAGE_SIZE), True),
        "channels": (one_of((1, 3)), True),
        "mean": (numbers(None), True),
        "std": (numbers(None, positive=True), True),
        "crop_pct": (number(0.05, 1), False),
    }
    problems = record(value, fields, "preprocessing")
    if problems:
        return problems
    channels = value["channels"]
    if len(value["mean"]) != channels or len(value["std"]) != channels:
        problems.append(f"preprocessing: mean and std need one value per channel ({channels})")
    resize = value["image_size"] / value.get("crop_pct", 1.0)
    if resize > MAX_RESIZE:
        problems.append(
            f"preprocessing: image_size / crop_pct resizes images to {resize:.0f} pixels "
            f"before the crop; at most {MAX_RESIZE}"
        )
    return problems


def _classes(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return f"must be a list of class names (text), got {_shown(value)}"
    if not 2 <= len(value) <= MAX_CLASSES:
        return (
            f"a classifier needs at least two classes and at most {MAX_CLASSES}, got {len(value)}"
        )
    return None  # what names may hold is checked by check_class_names


def _quantization(value: Any) -> str | None:
    if not isinstance(value, dict) or not isinstance(value.get("mode", ""), str):
        return f"must be a record with a text 'mode', got {_shown(value)}"
    return None


def _kwargs(value: Any) -> str | None:
    plain = (int, float, str, bool, type(None))
    ok = isinstance(value, dict) and all(
        isinstance(k, str)
        and (
            isinstance(v, plain)
            or (isinstance(v, (list, tuple)) and all(isinstance(e, plain) for e in v))
        )
        for k, v in value.items()
    )
    return None if ok else f"must map names to numbers, text or lists, got {_shown(value)}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
