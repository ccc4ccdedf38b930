"""ONNX Runtime's transforms of an fp32 ONNX file: dynamic int8, static int8 in QDQ format
calibrated on given inputs, and fp16 with fp32 inputs and outputs. The ONNX plugin makes its
variants with these; `dlkit quantize` (`toolkit.variants.quantize`) adds the accuracy gate.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.choices import CalibrationMethod, QuantizeMode
from toolkit.cpu import cpu_features, int8_types
from toolkit.errors import DlkitError
from toolkit.files import private_folder

if TYPE_CHECKING:
    import numpy as np

CALIBRATION_BATCH = 16


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
        _CalibrationReader(calibration, batch_size=CALIBRATION_BATCH),
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
