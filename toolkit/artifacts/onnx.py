"""ONNX artifacts: metadata in `metadata_props`, export with torch's dynamo exporter, and the
ONNX Runtime runner (CPU; CUDA/TensorRT providers only when they really start here).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from toolkit.artifacts.metadata import ArtifactInfo, parse_info
from toolkit.artifacts.runner import Runner, first_line
from toolkit.choices import Device, Format
from toolkit.devices import cuda_available
from toolkit.errors import DlkitError

METADATA_KEY = "dlkit"
DEFAULT_OPSET = 18
GRAPH_OPTIMIZATIONS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def load_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """The ONNX graph without its external data (metadata and signatures only)."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise DlkitError(f"{path} is not a readable ONNX model: {first_line(exc)}") from exc


def read_info(path: str | os.PathLike) -> ArtifactInfo:
    props = {p.key: p.value for p in load_model_proto(path).metadata_props}
    return parse_info(props.get(METADATA_KEY), path)


def write_info(path: str | os.PathLike, info: ArtifactInfo) -> None:
    """Store `info` in an ONNX file's `metadata_props`, replacing earlier dlkit metadata."""
    model = onnx.load(str(path))
    for prop in [p for p in model.metadata_props if p.key == METADATA_KEY]:
        model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.save(model, str(path))


def export(
    model,
    info: ArtifactInfo,
    path: str | os.PathLike,
    example,
    opset: int = DEFAULT_OPSET,
    static_batch: int | None = None,
) -> dict[str, Any]:
    """Export with torch's current (dynamo) exporter to one self-contained file with input
    `input` and output `logits`, the batch dimension dynamic unless `static_batch`. Returns
    the opset the file really has (the exporter may raise the one asked for)."""
    dynamic = None if static_batch else ({0: torch.export.Dim("batch", min=1)},)
    try:
        # The exporter reports progress on stdout, which belongs to --json.
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                external_data=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=dynamic,
                verbose=False,
            )
    except Exception as exc:
        cause = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # the file system's (a full disk), not the model's: said as such
            raise cause from exc
        raise DlkitError(
            f"ONNX export of {info.model.name} failed: {exporter_failure(exc)}. "
            "The TorchScript export (--torchscript) may still work."
        ) from exc
    write_info(path, info)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise DlkitError(f"the exported ONNX model is invalid: {exporter_failure(exc)}") from exc
    return {"opset": file_opset(path)}


def file_opset(path: str | os.PathLike) -> int:
    """The default-domain opset an ONNX file declares."""
    imports = load_model_proto(path).opset_import
    return next((int(o.version) for o in imports if o.domain in ("", "ai.onnx")), 0)


def exporter_failure(exc: BaseException) -> str:
    """The most telling line of an exporter's error (they run to pages): the root exception of
    torch.onnx's "Exception summary" (it names the op), else the first line."""
    summary = str(exc).partition("## Exception summary")[2]
    for line in summary.splitlines():
        if line.startswith("<class"):
            return line.split(">: ", 1)[-1][:400]
    return first_line(exc, 400)


def gpu_providers(tensorrt: bool = False) -> list[str]:
    """ONNX Runtime GPU providers that this build offers, best first, and only if a CUDA
    device is visible (onnxruntime-gpu lists them even on machines without a GPU)."""
    if not cuda_available():
        return []
    wanted = ["TensorrtExecutionProvider"] if tensorrt else []
    wanted.append("CUDAExecutionProvider")
    return [p for p in wanted if p in ort.get_available_providers()]


class OnnxRunner(Runner):
    """An ONNX file through ONNX Runtime: the CPU provider, or CUDA (and TensorRT on request)
    when this machine really has them — a provider that fails to start is an error, not a
    silent fall back to the CPU."""

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        optimization: str = "all",
        tensorrt: bool = False,
    ):
        device = Device.parse(device, "device")
        if optimization not in GRAPH_OPTIMIZATIONS:
            raise DlkitError(f"graph optimization must be one of {', '.join(GRAPH_OPTIMIZATIONS)}")
        self.info = read_info(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = GRAPH_OPTIMIZATIONS[optimization]
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: provider fall-backs are checked below
        wanted = gpu_providers(tensorrt) if device in (Device.CUDA, Device.AUTO) else []
        if device == Device.CUDA and not wanted:
            raise DlkitError(
                "--device cuda needs onnxruntime-gpu with a working GPU; this onnxruntime offers "
                f"{ort.get_available_providers()}. Use --device cpu"
            )
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=[*wanted, "CPUExecutionProvider"]
            )
        except Exception as exc:
            raise DlkitError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from exc
        self.providers = self.session.get_providers()
        if device == Device.CUDA and self.providers[0] not in wanted:
            raise DlkitError(
                f"ONNX Runtime could not start {wanted[0]} (no usable GPU or CUDA libraries); "
                "use --device cpu"
            )
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0].astype(np.float32, copy=False)


class Handler:
    suffix = ".onnx"
    format = Format.ONNX

    def unavailable(self, device: str) -> str:
        """Why ONNX cannot run on `device` here, or "" (checked before any file is made)."""
        if device == Device.CUDA and not gpu_providers():
            return "ONNX Runtime has no CUDA provider here (onnxruntime-gpu runs ONNX on the GPU)"
        return ""

    def read_info(self, path: str | os.PathLike) -> ArtifactInfo:
        return read_info(path)

    def open_runner(self, path: str | os.PathLike, device: str = "cpu", **options: Any) -> Runner:
        return OnnxRunner(path, device=device, **options)

    def export(self, model, info, path, example, **options: Any) -> dict[str, Any]:
        return export(model, info, path, example, **options)
