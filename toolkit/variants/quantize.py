"""`dlkit quantize`: ONNX quantization and reduced precision, with the accuracy cost measured.

ONNX Runtime's tools (dynamic int8, static int8 in QDQ format calibrated on real training
images, fp16 with fp32 inputs and outputs) are applied by `toolkit.artifacts.onnx_quantize`,
the same transforms the ONNX variants are made with; calibration data comes from here.
PyTorch-native int8 is in `toolkit.variants.pt2e`.

`quantize_artifact` writes the new file beside its target, evaluates it and its fp32 source on
the validation data, and renames it into place only if its gate passes
(`toolkit.variants.gate.compare_with_baseline`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit import __version__
from toolkit.artifacts import detect_format, open_runner, read_info
from toolkit.artifacts.contract import check_classifier, first_images
from toolkit.artifacts.isolated import open_model, run_isolated
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.artifacts.onnx import write_info
from toolkit.artifacts.onnx_quantize import quantize_onnx
from toolkit.choices import Format, Precision, QuantizeMode
from toolkit.cpu import cpu_features
from toolkit.data import load_split
from toolkit.errors import DlkitError
from toolkit.evaluate import predict_dataset
from toolkit.files import atomic_path, sha256_file
from toolkit.log import logger
from toolkit.variants.gate import AccuracyComparison, compare_with_baseline

DEFAULT_CALIBRATION_SAMPLES = 256
MODE_PRECISION = {
    QuantizeMode.DYNAMIC: Precision.INT8,
    QuantizeMode.STATIC: Precision.INT8,
    QuantizeMode.FP16: Precision.FP16,
}
MODE_TAGS = {QuantizeMode.DYNAMIC: "int8-dynamic", QuantizeMode.STATIC: "int8-static"}


# Measured (ONNX Runtime 1.31, one thread): dynamic int8 ran ResNet-18 (224 px, batch 1) at
# 446 ms against 93 ms fp32 (AMD EPYC, AVX-512 VNNI; 87 against 25 ms on an AVX2 EPYC,
# benchmarks/results/quantization.md) and the digits smallresnet at 6.9x (batch 1) to 13.7x
# (batch 32) its fp32 time: it quantizes activations at run time, and convolutions become
# ConvInteger, which has no fast kernels. Static int8 ran 1.2-1.6x faster than fp32 there.
DYNAMIC_CONV_WARNING = (
    "dynamic int8 usually runs convolutional models slower than fp32 (ResNet-18 at 4.8x and "
    "the digits smallresnet at 7-14x the fp32 time on this project's CPUs): it quantizes "
    "activations at every call, and its ConvInteger kernels are slow. It shrinks the file; "
    "for speed use --mode static, and measure with `dlkit bench`"
)


def dynamic_speed_warning(source: str | os.PathLike) -> str:
    """The warning for dynamic int8 of a model with convolutions ("" for one without)."""
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    return DYNAMIC_CONV_WARNING if any(n.op_type == "Conv" for n in graph.node) else ""


def quantized_info(info: ArtifactInfo, source: str | os.PathLike, mode: str, details: dict):
    """The metadata of a file quantized from `source` (an fp32 ONNX file)."""
    return info.derive(
        precision=MODE_PRECISION[QuantizeMode(mode)],
        quantization={"mode": str(mode), **details},
        source_checkpoint=info.source_checkpoint or str(source),
        source_sha256=sha256_file(source),
        dlkit_version=__version__,
    )


# -------------------------------------------------------------------------- calibration data


def calibration_samples(
    info: ArtifactInfo,
    count: int | None = None,
    calib_data: str | os.PathLike | None = None,
    dataset: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """`count` preprocessed training images: from `calib_data` (an image folder, or a .npy
    array already preprocessed), an embedded `dataset`, or by default the artifact's own
    training split. `count=None` asks for DEFAULT_CALIBRATION_SAMPLES and takes all there
    are when there are fewer, with a warning; a `count` there are not enough for is refused."""
    if count is not None and count < 1:
        raise DlkitError("--calib-samples must be at least 1")
    wanted = DEFAULT_CALIBRATION_SAMPLES if count is None else count
    if calib_data is not None and Path(calib_data).suffix == ".npy":
        samples = _calibration_array(calib_data, info.preprocessing.input_shape)
        where = str(calib_data)
    else:
        source = info.source
        if calib_data is not None:
            source = dataclasses.replace(source, data=str(calib_data), dataset=None)
        elif dataset is not None:
            source = dataclasses.replace(source, data=None, dataset=dataset)
        split = "all" if calib_data is not None else "train"
        images, _ = load_split(source, info.preprocessing, split)
        where = source.describe()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        samples = np.stack([images[int(i)][0].numpy() for i in order[:wanted]])
    if len(samples) < wanted:
        if count is not None:
            raise DlkitError(
                f"only {len(samples)} calibration images in {where}, asked for {count}; "
                "lower --calib-samples"
            )
        logger.warning(
            "calibrating on all %d images in %s (fewer than the %d static int8 takes by "
            "default): its activation ranges rest on fewer examples; the accuracy check "
            "below says what that cost",
            len(samples),
            where,
            DEFAULT_CALIBRATION_SAMPLES,
        )
    return samples[:wanted]


def calibration_shortfall(samples: int, count: int | None) -> str:
    """What a calibration on fewer images than the default was calibrated on, in words ("" if
    it was not short: the default count, or a count asked for)."""
    if count is not None or samples >= DEFAULT_CALIBRATION_SAMPLES:
        return ""
    return f"all {samples} training images there are (the default is {DEFAULT_CALIBRATION_SAMPLES})"


def calibration_note(samples: int, count: int | None) -> str:
    """What the report says of a calibration on fewer images than the default ("" if not)."""
    shortfall = calibration_shortfall(samples, count)
    return f"calibrated on {shortfall}" if shortfall else ""


def _calibration_array(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """A .npy of preprocessed inputs: numbers only (never pickled objects), finite."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DlkitError(
            f"calibration array {path} is not a plain numeric .npy file: {exc}"
        ) from None
    if array.ndim != 4 or tuple(array.shape[1:]) != shape:
        raise DlkitError(
            f"calibration array {path} has shape {array.shape}; the model takes "
            f"(N, {', '.join(map(str, shape))}) preprocessed inputs"
        )
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise DlkitError(f"calibration array {path} must hold finite numbers")
    return array.astype(np.float32)


# ------------------------------------------------------------------------- the measured gate


@dataclass
class QuantizeResult:
    """A quantized artifact and what it costs against its fp32 source."""

    path: str
    mode: QuantizeMode
    comparison: AccuracyComparison
    size_bytes: int
    baseline_size_bytes: int
    details: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "mode": self.mode,
            **self.comparison.to_dict(),
            "size_bytes": self.size_bytes,
            "baseline_size_bytes": self.baseline_size_bytes,
            "details": self.details,
            "passed": self.passed,
            "kept": self.passed,
        }


def default_output(source: str | os.PathLike, mode: str) -> Path:
    """`best.onnx` → `best.int8-static.onnx`, `best.fp16.onnx`, …"""
    source = Path(source)
    tag = MODE_TAGS.get(QuantizeMode(mode), str(mode))
    return source.with_name(f"{source.stem}.{tag}{source.suffix}")


def _check_source(source: str | os.PathLike, mode: str) -> ArtifactInfo:
    fmt = detect_format(source)
    if fmt != Format.ONNX:
        raise DlkitError(
            f"mode '{mode}' does not apply to {source}: {fmt} artifacts cannot be quantized "
            "here; export to ONNX first (`dlkit export CHECKPOINT --onnx`) and quantize that"
        )
    info = read_info(source)
    if info.quantization or info.precision != Precision.FP32:
        raise DlkitError(
            f"{source} is already {info.precision}"
            + (f" ({info.quantization.get('mode')})" if info.quantization else "")
            + "; quantize its fp32 source instead"
        )
    return info


def quantize_artifact(
    source: str | os.PathLike,
    mode: str,
    out: str | os.PathLike | None = None,
    *,
    calib_data: str | os.PathLike | None = None,
    dataset: str | None = None,
    calib_samples: int | None = None,
    method: str = "minmax",
    per_channel: bool = True,
    max_accuracy_drop: float = 1.0,
    force: bool = False,
) -> QuantizeResult:
    """Quantize an fp32 ONNX artifact, measure it against its source on the validation split,
    and keep it at `out` only if its accuracy gate passes. `calib_samples=None` calibrates on
    up to DEFAULT_CALIBRATION_SAMPLES images (all there are, if fewer)."""
    mode = QuantizeMode.parse(mode, "mode")
    info = _check_source(source, mode)
    target = Path(out) if out else default_output(source, mode)
    if target.resolve() == Path(source).resolve():
        raise DlkitError(f"--out {target} is the source itself; write the result elsewhere")
    if target.exists() and not force:
        raise DlkitError(f"{target} exists; pass --force to replace it")
    val, _ = load_split(info.source, info.preprocessing, "val")
    if len(val) == 0:
        raise DlkitError(f"no validation images in {info.source.describe()} to measure accuracy")
    check_classifier(
        source, info, first_images(val, info, source)
    )  # before any accuracy is reported
    calibration, extra = None, {}
    if mode == QuantizeMode.STATIC:
        calibration = calibration_samples(info, calib_samples, calib_data, dataset)
        extra = {"calibration_samples": len(calibration), "cpu": cpu_features().to_dict()}
        if note := calibration_note(len(calibration), calib_samples):
            extra["calibration_note"] = note
    elif mode == QuantizeMode.DYNAMIC and (warning := dynamic_speed_warning(source)):
        extra = {"speed_warning": warning}
    # The source is a file from outside: it runs, and is quantized, in a child process under
    # the model timeout (ONNX Runtime's pre-processing takes exponential time on nested Ifs).
    baseline_logits, labels = predict_dataset(open_model(source), val)
    try:
        with atomic_path(target) as tmp:
            details = extra | run_isolated(
                quantize_onnx, source, tmp, mode, calibration, method, per_channel,
                what=str(source), doing="quantizing it",
            )  # fmt: skip
            write_info(tmp, quantized_info(info, source, mode, details))
            logits, _ = predict_dataset(open_runner(tmp), val)
            comparison = compare_with_baseline(logits, baseline_logits, labels, max_accuracy_drop)
            result = QuantizeResult(
                path=str(target),
                mode=mode,
                comparison=comparison,
                size_bytes=tmp.stat().st_size,
                baseline_size_bytes=Path(source).stat().st_size,
                details={"mode": str(mode), **details},
            )
            if not result.passed:
                raise _Discard(result)  # unwinds atomic_path, which deletes the file
    except _Discard as discarded:
        return discarded.result
    return result


class _Discard(Exception):
    """Raised inside `atomic_path` to throw the new file away."""

    def __init__(self, result: QuantizeResult):
        self.result = result
