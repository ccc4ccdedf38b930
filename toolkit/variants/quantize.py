"""ONNX quantization and reduced precision, with the accuracy cost always measured.

ONNX Runtime's tools: dynamic int8, static int8 in QDQ format calibrated on real training
images, fp16 with fp32 inputs and outputs (`quantize_onnx`, one dispatch for `dlkit quantize`
and the benchmark variants). PyTorch-native int8 is in `toolkit.variants.pt2e`.

`quantize_artifact` writes the new file beside its target, evaluates it and its fp32 source on
the validation data, and renames it into place only if its gate passes
(`toolkit.variants.gate.compare_with_baseline`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit import __version__
from toolkit.artifacts import detect_format, open_runner, read_info
from toolkit.artifacts.contract import check_classifier, first_images
from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.artifacts.onnx import write_info
from toolkit.choices import CalibrationMethod, Format, Precision, QuantizeMode
from toolkit.data import load_split
from toolkit.devices import cpu_info
from toolkit.errors import DlkitError
from toolkit.evaluate import predict_dataset
from toolkit.files import atomic_path, private_folder, sha256_file
from toolkit.variants.gate import AccuracyComparison, compare_with_baseline

DEFAULT_CALIBRATION_SAMPLES = 256
MODE_PRECISION = {
    QuantizeMode.DYNAMIC: Precision.INT8,
    QuantizeMode.STATIC: Precision.INT8,
    QuantizeMode.FP16: Precision.FP16,
}
MODE_TAGS = {QuantizeMode.DYNAMIC: "int8-dynamic", QuantizeMode.STATIC: "int8-static"}


# ---------------------------------------------------------------------------- the CPU we run on


@dataclass(frozen=True)
class CpuFeatures:
    """The x86 instruction sets that decide how int8 kernels run."""

    model: str
    avx2: bool
    avx512: bool
    vnni: bool
    amx: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_features() -> CpuFeatures:
    """This machine's CPU, as far as int8 kernels care."""
    model, flags = cpu_info()
    return CpuFeatures(
        model=model,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        vnni=bool({"avx512_vnni", "avx_vnni"} & flags),
        amx="amx_int8" in flags,
    )


def int8_types(features: CpuFeatures) -> dict[str, Any]:
    """Activation/weight types and reduce_range for ONNX Runtime's x86 int8 kernels.

    u8 activations × s8 weights is what the x86 kernels are fast at. Without VNNI they multiply
    with VPMADDUBSW, whose 16-bit intermediate sums can saturate; 7-bit weights
    (`reduce_range`) avoid that. With VNNI (or off x86) the full range is safe.
    """
    x86 = features.avx2 or features.avx512
    reduce_range = x86 and not features.vnni
    reason = (
        "x86 without VNNI: u8s8 with 7-bit weights so VPMADDUBSW cannot saturate"
        if reduce_range
        else "VNNI (or non-x86): u8s8 at full range"
    )
    return {"activation": "uint8", "weight": "int8", "reduce_range": reduce_range, "why": reason}


# ----------------------------------------------------------------------------- ONNX transforms


def _quant_type(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


@contextlib.contextmanager
def _preprocessed(src: str | os.PathLike) -> Iterator[Path]:
    """ONNX Runtime's recommended pre-processing: symbolic shape inference and graph
    optimisation, which also replaces the exporter's stale intermediate shapes."""
    from onnxruntime.quantization import quant_pre_process

    with private_folder("dlkit-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        yield prepared


class _CalibrationReader:
    """Feeds calibration batches to ONNX Runtime's calibrator."""

    def __init__(self, samples: np.ndarray, batch_size: int):
        self.batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {"input": self.batches[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def _dynamic(src: Path, dst: Path) -> dict[str, Any]:
    from onnxruntime.quantization import quantize_dynamic

    types = int8_types(cpu_features())
    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=False,
        reduce_range=types["reduce_range"],
        weight_type=_quant_type(types["weight"]),
    )
    return {"types": types}


def _static(
    src: Path, dst: Path, calibration: np.ndarray, method: str, per_channel: bool
) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, quantize_static

    types = int8_types(cpu_features())
    quantize_static(
        str(src),
        str(dst),
        _CalibrationReader(calibration, batch_size=16),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        reduce_range=types["reduce_range"],
        activation_type=_quant_type(types["activation"]),
        weight_type=_quant_type(types["weight"]),
        calibrate_method={
            CalibrationMethod.MINMAX: OrtMethod.MinMax,
            CalibrationMethod.ENTROPY: OrtMethod.Entropy,
            CalibrationMethod.PERCENTILE: OrtMethod.Percentile,
        }[CalibrationMethod.parse(method, "calibration method")],
        extra_options={"CalibTensorRangeSymmetric": False},
    )
    return {"types": types, "method": method, "per_channel": per_channel}


def _fp16(src: Path, dst: Path) -> dict[str, Any]:
    """Weights and activations in fp16 for GPUs; inputs and outputs stay fp32 so clients
    need not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return {}


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    mode: str,
    calibration: np.ndarray | None = None,
    method: str = "minmax",
    per_channel: bool = True,
) -> dict[str, Any]:
    """Write `src` quantized by `mode` to `dst`; returns what was done (types, method). int8
    modes run ONNX Runtime's pre-processing (shape inference, optimisation) first; static
    needs `calibration` (preprocessed N×C×H×W float32)."""
    mode = QuantizeMode.parse(mode, "mode")
    if mode == QuantizeMode.FP16:
        return _fp16(Path(src), Path(dst))
    with _preprocessed(src) as prepared:
        if mode == QuantizeMode.DYNAMIC:
            return _dynamic(prepared, Path(dst))
        if calibration is None:
            raise DlkitError("static quantization needs calibration samples")
        return _static(prepared, Path(dst), calibration, method, per_channel)


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
    count: int = DEFAULT_CALIBRATION_SAMPLES,
    calib_data: str | os.PathLike | None = None,
    dataset: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """`count` preprocessed training images: from `calib_data` (an image folder, or a .npy
    array already preprocessed), an embedded `dataset`, or by default the artifact's own
    training split."""
    if count < 1:
        raise DlkitError("--calib-samples must be at least 1")
    if calib_data is not None and Path(calib_data).suffix == ".npy":
        samples = _calibration_array(calib_data, info.preprocessing.input_shape)
    else:
        source = info.source
        if calib_data is not None:
            source = dataclasses.replace(source, data=str(calib_data), dataset=None)
        elif dataset is not None:
            source = dataclasses.replace(source, data=None, dataset=dataset)
        split = "all" if calib_data is not None else "train"
        images, _ = load_split(source, info.preprocessing, split)
        if len(images) < count:
            raise DlkitError(
                f"only {len(images)} calibration images in {source.describe()}, asked for "
                f"{count}; lower --calib-samples"
            )
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        samples = np.stack([images[int(i)][0].numpy() for i in order[:count]])
    if len(samples) < count:
        raise DlkitError(f"only {len(samples)} calibration samples, asked for {count}")
    return samples[:count]


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
    calib_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    method: str = "minmax",
    per_channel: bool = True,
    max_accuracy_drop: float = 1.0,
    force: bool = False,
) -> QuantizeResult:
    """Quantize an fp32 ONNX artifact, measure it against its source on the validation split,
    and keep it at `out` only if its accuracy gate passes."""
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
    baseline_logits, labels = predict_dataset(open_runner(source), val)
    try:
        with atomic_path(target) as tmp:
            details = extra | quantize_onnx(source, tmp, mode, calibration, method, per_channel)
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
