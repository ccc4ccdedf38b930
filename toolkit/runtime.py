"""Runners: one call — a float32 N×C×H×W numpy batch in, logits out — for every backend.

Evaluation, prediction, parity checks and benchmarks are written once against `Runner`.
"""

from __future__ import annotations

import os

import numpy as np

from toolkit.artifact import ArtifactInfo, load_torchscript, read_artifact_info, sniff_format
from toolkit.errors import DlkitError


class Runner:
    """Base class: checks the input against the artifact's metadata, then runs the backend."""

    info: ArtifactInfo
    name = "runner"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.check_input(batch)
        return self.run(np.ascontiguousarray(batch, dtype=np.float32))

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_input(self, batch: np.ndarray) -> None:
        expected = self.info.preprocessing.input_shape
        if (
            not isinstance(batch, np.ndarray)
            or batch.ndim != 4
            or tuple(batch.shape[1:]) != expected
        ):
            shape = getattr(batch, "shape", type(batch).__name__)
            raise DlkitError(
                f"{self.name} expects a batch of shape (N, {', '.join(map(str, expected))}) "
                f"({expected[0]} channel{'s' if expected[0] > 1 else ''}, "
                f"{expected[1]}×{expected[2]} pixels); got {shape}"
            )
        if not np.issubdtype(batch.dtype, np.floating):
            raise DlkitError(
                f"{self.name} expects float32 input after preprocessing; got {batch.dtype}"
            )


def _set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


class EagerRunner(Runner):
    """A dlkit checkpoint (or an in-memory model) in eager PyTorch, optionally under autocast
    and channels_last."""

    name = "eager"

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        device: str = "cpu",
        threads: int | None = None,
        autocast: str | None = None,
        channels_last: bool = False,
        model=None,
        info: ArtifactInfo | None = None,
    ):
        import torch

        from toolkit.devices import resolve_device
        from toolkit.training.checkpoint import load_model

        _set_torch_threads(threads)
        self.device = resolve_device(device)
        if model is None:
            model, info = load_model(path)
        self.model, self.info = model.eval(), info
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=self.memory_format)
        if autocast not in (None, "fp16", "bf16"):
            raise DlkitError(f"autocast must be fp16 or bf16, got {autocast!r}")
        self.autocast_dtype = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}[autocast]

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to(self.device, memory_format=self.memory_format)
        enabled = self.autocast_dtype is not None
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled),
        ):
            return self.model(x).float().cpu().numpy()


class TorchScriptRunner(Runner):
    """A TorchScript file written by `dlkit export`."""

    name = "torchscript"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):

        from toolkit.devices import resolve_device

        _set_torch_threads(threads)
        self.device = resolve_device(device)
        self.module, self.info = load_torchscript(path, map_location=str(self.device))

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


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
        import onnxruntime as ort

        if device not in ("cpu", "cuda", "auto"):
            raise DlkitError(f"unknown device {device!r}; choose auto, cpu or cuda")
        if optimization not in GRAPH_OPTIMIZATIONS:
            raise DlkitError(f"graph optimization must be one of {GRAPH_OPTIMIZATIONS}")
        self.info = read_artifact_info(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: provider fall-backs are checked below
        wanted = gpu_providers(tensorrt) if device in ("cuda", "auto") else []
        if device == "cuda" and not wanted:
            raise DlkitError(
                "--device cuda needs onnxruntime-gpu with a working GPU; this onnxruntime offers "
                f"{ort.get_available_providers()}. Use --device cpu"
            )
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=[*wanted, "CPUExecutionProvider"]
            )
        except Exception as exc:
            raise DlkitError(f"ONNX Runtime cannot load {path}: {_first_line(exc)}") from exc
        self.providers = self.session.get_providers()
        if device == "cuda" and self.providers[0] not in wanted:
            raise DlkitError(
                f"ONNX Runtime could not start {wanted[0]} (no usable GPU or CUDA libraries); "
                "use --device cpu"
            )
        self.input_name = self.session.get_inputs()[0].name

    def check_input(self, batch: np.ndarray) -> None:
        super().check_input(batch)
        static = self.info.static_batch
        if static and batch.shape[0] != static:
            raise DlkitError(
                f"{self.name} model was exported with a fixed batch of {static}; "
                f"got {batch.shape[0]}"
            )

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0].astype(np.float32, copy=False)


def gpu_providers(tensorrt: bool = False) -> list[str]:
    """ONNX Runtime GPU providers that this build offers, best first, and only if a CUDA
    device is visible (onnxruntime-gpu lists them even on machines without a GPU)."""
    import onnxruntime as ort

    from toolkit.devices import cuda_available

    if not cuda_available():
        return []
    wanted = ["TensorrtExecutionProvider"] if tensorrt else []
    wanted.append("CUDAExecutionProvider")
    return [p for p in wanted if p in ort.get_available_providers()]


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


RUNNERS = {"checkpoint": EagerRunner, "torchscript": TorchScriptRunner, "onnx": OnnxRunner}


def open_runner(path: str | os.PathLike, device: str = "cpu", **options) -> Runner:
    """Open any model artifact dlkit wrote (checkpoint, TorchScript, ONNX) as a Runner.

    `options` go to the backend: `threads` (all), `autocast`/`channels_last` (checkpoints),
    `optimization`/`tensorrt` (ONNX). A `grpc://host:port/NAME` or `http://...` URL opens a
    model served by Triton (options go to `TritonClient`).
    """
    if str(path).startswith(("grpc://", "http://")):
        from toolkit.triton.client import TritonRunner

        return TritonRunner(str(path), device=device, **options)
    runner_cls = RUNNERS[sniff_format(path)]
    try:
        return runner_cls(path, device=device, **options)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise DlkitError(f"{runner_cls.name} runners do not take that option: {exc}") from exc
