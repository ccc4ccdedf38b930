"""Quantization and reduced precision, with the accuracy cost always measured.

ONNX (ONNX Runtime's tools): dynamic int8, static int8 in QDQ format calibrated on real training
images, fp16 with fp32 inputs and outputs. PyTorch-native: int8 through torchao's PT2E flow with
the x86 inductor quantizer (`pt2e_int8`), and dynamic int8 for Linear layers
(`dynamic_int8_linear`); AMP inference is a runner option (`EagerRunner(autocast=...)`).

`quantize_artifact` writes the new file beside its target, evaluates it and its fp32 source on
the validation data, and renames it into place only if the accuracy drop is within budget.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import __version__
from toolkit.artifact import (
    ArtifactInfo,
    read_artifact_info,
    sniff_format,
    write_onnx_metadata,
)
from toolkit.errors import DlkitError
from toolkit.files import atomic_path, sha256_file

MODES_BY_FORMAT = {"onnx": ("dynamic", "static", "fp16")}
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_SAMPLES = 256


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
    from toolkit.devices import cpu_info

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


def quantize_dynamic_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Int8 weights, activations quantized on the fly (ONNX Runtime `quantize_dynamic`)."""
    from onnxruntime.quantization import quantize_dynamic

    types = int8_types(cpu_features())
    with _preprocessed(src) as prepared:
        quantize_dynamic(
            str(prepared),
            str(dst),
            per_channel=False,
            reduce_range=types["reduce_range"],
            weight_type=_quant_type(types["weight"]),
        )
    return {"types": types}


@contextlib.contextmanager
def _preprocessed(src: str | os.PathLike) -> Iterator[Path]:
    """ONNX Runtime's recommended pre-processing: symbolic shape inference and graph
    optimisation, which also replaces the exporter's stale intermediate shapes."""
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="dlkit-quant-") as tmp:
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


def quantize_static_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: np.ndarray,
    method: str = "minmax",
    per_channel: bool = True,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Static int8 in QDQ format: shape inference and graph optimisation first, then
    calibration of activation ranges on `calibration` (preprocessed N×C×H×W float32)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if method not in METHODS:
        raise DlkitError(f"unknown calibration method {method!r}; choose from {METHODS}")
    types = int8_types(cpu_features())
    with _preprocessed(src) as prepared:
        quantize_static(
            str(prepared),
            str(dst),
            _CalibrationReader(calibration, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=types["reduce_range"],
            activation_type=_quant_type(types["activation"]),
            weight_type=_quant_type(types["weight"]),
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[method],
            extra_options={"CalibTensorRangeSymmetric": False},
        )
    return {"types": types, "method": method, "per_channel": per_channel}


def quantize_fp16_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Weights and activations in fp16 for GPUs; inputs and outputs stay fp32 so clients
    need not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {}


# ------------------------------------------------------------------------ PyTorch-native int8


def pt2e_int8(model, calibration: np.ndarray, batch_size: int = 16):
    """Static int8 through torchao's PT2E flow with the x86 inductor quantizer.

    Returns the converted module; run it under `torch.compile` (inductor, freezing on) for
    int8 kernels, at a fixed batch size. Needs `torch.export.export(..., strict=True)`: the
    default non-strict export fails in `prepare_pt2e` for ResNets with this torchao.
    """
    import torch

    try:
        from torchao.quantization.pt2e import (
            allow_exported_model_train_eval,
            move_exported_model_to_eval,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as exc:
        raise DlkitError(f"PyTorch-native int8 needs torchao ({exc}); pip install torchao") from exc

    example = torch.from_numpy(calibration[:batch_size])
    with torch.no_grad():
        graph = torch.export.export(model.eval(), (example,), strict=True).module()
        quantizer = X86InductorQuantizer().set_global(
            get_default_x86_inductor_quantization_config()
        )
        prepared = prepare_pt2e(graph, quantizer)
        for start in range(0, len(calibration), batch_size):
            prepared(torch.from_numpy(calibration[start : start + batch_size]))
        converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    allow_exported_model_train_eval(converted)  # so runners may call .eval() like on any model
    return converted


def compile_int8(converted, example):
    """`torch.compile` a `pt2e_int8` module for a fixed input shape (that of `example`), with
    inductor freezing so the int8 weights are pre-packed for oneDNN. Compiles now (about 10 s
    for ResNet-18 on 2 cores): freezing must be on while the graph is compiled, and passing it
    through `torch.compile(options=...)` fails to lower the quantized convolutions here."""
    import torch
    import torchao.quantization.pt2e.inductor_passes.x86  # noqa: F401  (int8 fusion patterns)

    compiled = torch.compile(converted, dynamic=False)
    with torch._inductor.config.patch(freezing=True), torch.no_grad(), warnings.catch_warnings():
        # torch's own int8 lowering copies a tensor the way it warns against; under
        # `-W error` that warning would abort the lowering.
        warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
        compiled(example)
    return compiled


def dynamic_int8_linear(model):
    """Int8 weights and dynamically quantized activations for every Linear layer (torchao)."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise DlkitError(f"PyTorch-native int8 needs torchao ({exc}); pip install torchao") from exc
    quantize_(model.eval(), Int8DynamicActivationInt8WeightConfig())
    return model


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
    import dataclasses

    import torch

    from toolkit.data import load_split

    if count < 1:
        raise DlkitError("--calib-samples must be at least 1")
    shape = info.preprocessing.input_shape
    if calib_data is not None and Path(calib_data).suffix == ".npy":
        array = np.load(calib_data)
        if array.ndim != 4 or tuple(array.shape[1:]) != shape:
            raise DlkitError(
                f"calibration array {calib_data} has shape {array.shape}; the model takes "
                f"(N, {', '.join(map(str, shape))}) preprocessed inputs"
            )
        samples = array.astype(np.float32)
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


# ------------------------------------------------------------------------- the measured gate


@dataclass
class QuantizeResult:
    """A quantized artifact and what it costs: accuracy of both, drop in points, agreement."""

    path: str
    mode: str
    accuracy: float
    baseline_accuracy: float
    accuracy_drop_points: float
    top1_agreement: float
    size_bytes: int
    baseline_size_bytes: int
    max_accuracy_drop: float
    details: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.accuracy_drop_points <= self.max_accuracy_drop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed, "kept": self.passed}


def default_output(source: str | os.PathLike, mode: str) -> Path:
    """`best.onnx` → `best.int8-static.onnx`, `best.fp16.onnx`, …"""
    source = Path(source)
    tag = {"dynamic": "int8-dynamic", "static": "int8-static"}.get(mode, mode)
    return source.with_name(f"{source.stem}.{tag}{source.suffix}")


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
    """Quantize an fp32 artifact, measure it against its source on the validation split, and
    keep it at `out` only if it loses at most `max_accuracy_drop` points of accuracy."""
    from toolkit.data import load_split
    from toolkit.evaluate import predict_dataset
    from toolkit.runtime import open_runner

    fmt = sniff_format(source)
    info = read_artifact_info(source)
    if info.quantization or info.precision != "fp32":
        raise DlkitError(
            f"{source} is already {info.precision}"
            + (f" ({info.quantization['mode']})" if info.quantization else "")
            + "; quantize its fp32 source instead"
        )
    supported = MODES_BY_FORMAT.get(fmt, ())
    if mode not in supported:
        hint = (
            f"{fmt} artifacts support --mode {', '.join(supported)}"
            if supported
            else f"{fmt} artifacts cannot be quantized here; export to ONNX first "
            "(`dlkit export CHECKPOINT --onnx`) and quantize that"
        )
        raise DlkitError(f"mode {mode!r} does not apply to {source}: {hint}")
    target = Path(out) if out else default_output(source, mode)
    if target.exists() and not force:
        raise DlkitError(f"{target} exists; pass --force to replace it")

    val, _ = load_split(info.source, info.preprocessing, "val")
    if len(val) == 0:
        raise DlkitError(f"no validation images in {info.source.describe()} to measure accuracy")
    quantization: dict[str, Any] = {"mode": mode}
    if mode == "static":
        calibration = calibration_samples(info, calib_samples, calib_data, dataset)
        quantization |= {"calibration_samples": len(calibration), "cpu": cpu_features().to_dict()}
    precision = "fp16" if mode == "fp16" else "int8"
    new_info = info.derive(
        precision=precision,
        quantization=quantization,
        source_checkpoint=info.source_checkpoint or str(source),
        source_sha256=sha256_file(source),
        dlkit_version=__version__,
    )

    baseline_logits, labels = predict_dataset(open_runner(source), val)
    try:
        with atomic_path(target) as tmp:
            if mode == "dynamic":
                quantization |= quantize_dynamic_onnx(source, tmp)
            elif mode == "static":
                quantization |= quantize_static_onnx(source, tmp, calibration, method, per_channel)
            else:
                quantization |= quantize_fp16_onnx(source, tmp)
            write_onnx_metadata(tmp, new_info.derive(quantization=quantization))
            logits, _ = predict_dataset(open_runner(tmp), val)
            accuracy = float((logits.argmax(1) == labels).mean())
            baseline = float((baseline_logits.argmax(1) == labels).mean())
            result = QuantizeResult(
                path=str(target),
                mode=mode,
                accuracy=accuracy,
                baseline_accuracy=baseline,
                accuracy_drop_points=round((baseline - accuracy) * 100, 6),
                top1_agreement=float((logits.argmax(1) == baseline_logits.argmax(1)).mean()),
                size_bytes=tmp.stat().st_size,
                baseline_size_bytes=Path(source).stat().st_size,
                max_accuracy_drop=max_accuracy_drop,
                details=quantization,
            )
            if not result.passed:
                raise _Discard  # unwinds atomic_path, which deletes the file
    except _Discard:
        pass
    return result


class _Discard(Exception):
    """Raised inside `atomic_path` to throw the new file away."""
