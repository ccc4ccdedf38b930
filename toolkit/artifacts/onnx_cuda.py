"""ONNX Runtime on a CUDA GPU: which execution providers, with which options, and a session run
through IO binding, its input and output in device buffers.

The option builders are plain functions (tested anywhere); `DeviceBinding` runs on a GPU with
onnxruntime-gpu (and, for tests without one, on the CPU).

- cuDNN's convolution search: EXHAUSTIVE (ORT's default) times every algorithm the first time
  a shape is seen, the best for a runner that sees one batch size; HEURISTIC picks one without
  timing, for servers whose batch size changes with every dynamic batch (an exhaustive search
  inside a request would be its latency).
- CUDA graphs (`enable_cuda_graph`): the whole model replayed by one launch, which is what
  makes batch 1 fast; they need static shapes and fixed input and output addresses, so a runner
  with a graph is bound to one batch size and its IO binding never moves.
- TensorRT's provider: `TensorRTSettings` is written both as ONNX Runtime provider options and
  as the parameters of Triton's onnxruntime backend (`dlkit package --accelerator tensorrt`).
  It needs the TensorRT libraries, which the GPU machines dlkit was measured on do not have; on
  them it is configuration only, for the NGC image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.errors import DlkitError

if TYPE_CHECKING:
    import numpy as np

CUDA, TENSORRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
# ONNX Runtime's names of the element types dlkit's models take and answer, as numpy names.
ELEMENT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
ENGINE_CACHE = "/tmp/dlkit-tensorrt-engines"  # writable in the NGC image; engines are per GPU


@dataclass(frozen=True)
class TensorRTSettings:
    """What TensorRT's execution provider is started with: fp16 kernels allowed, engines (and
    tactic timings) cached in `engine_cache` so that a restart does not rebuild them, and the
    scratch memory a layer may use."""

    fp16: bool = True
    engine_cache: str = ENGINE_CACHE
    workspace_bytes: int = 1 << 30

    def provider_options(self, device_id: int = 0) -> dict[str, str]:
        """ONNX Runtime's TensorrtExecutionProvider options."""
        return {
            "device_id": str(device_id),
            "trt_fp16_enable": str(int(self.fp16)),
            "trt_max_workspace_size": str(self.workspace_bytes),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": self.engine_cache,
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": self.engine_cache,
        }

    def triton_parameters(self) -> dict[str, str]:
        """The same, as the parameters of a `gpu_execution_accelerator { name: "tensorrt" }` in
        a config of Triton's onnxruntime backend (its own key names)."""
        return {
            "precision_mode": "FP16" if self.fp16 else "FP32",
            "max_workspace_size_bytes": str(self.workspace_bytes),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": self.engine_cache,
        }


def cuda_options(
    device_id: int = 0, conv_algo_search: str = "EXHAUSTIVE", cuda_graph: bool = False
) -> dict[str, str]:
    """ONNX Runtime's CUDAExecutionProvider options."""
    if conv_algo_search not in CONV_ALGO_SEARCH:
        raise DlkitError(f"cuDNN convolution search must be one of {', '.join(CONV_ALGO_SEARCH)}")
    options = {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": conv_algo_search,
        # The fastest algorithms may need more scratch memory than cuDNN's default cap.
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
    }
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def execution_providers(
    available: Sequence[str],
    device_id: int = 0,
    tensorrt: TensorRTSettings | None = None,
    cuda_graph: bool = False,
    conv_algo_search: str = "EXHAUSTIVE",
) -> list[tuple[str, dict[str, str]]]:
    """The providers of a session on GPU `device_id`, best first, with their options, from the
    `available` ones (`ort.get_available_providers()`, or [] where no GPU is visible).
    DlkitError when CUDA's (or TensorRT's, if asked for) is not among them."""
    if CUDA not in available:
        raise DlkitError(
            "--device cuda needs onnxruntime-gpu with a working GPU; this onnxruntime offers "
            f"{list(available) or 'no GPU provider'}. Use --device cpu"
        )
    providers = []
    if tensorrt is not None:
        if TENSORRT not in available:
            raise DlkitError(
                "this onnxruntime has no TensorRT execution provider; run without tensorrt, or "
                "let Triton's NGC image use it (`dlkit package --accelerator tensorrt`)"
            )
        providers.append((TENSORRT, tensorrt.provider_options(device_id)))
    providers.append((CUDA, cuda_options(device_id, conv_algo_search, cuda_graph)))
    providers.append((CPU, {}))
    return providers


def element_type(ort_type: str, what: str) -> str:
    """The numpy dtype name of an ONNX Runtime tensor type dlkit runs on the GPU."""
    if ort_type not in ELEMENT_TYPES:
        raise DlkitError(f"the model's {what} is {ort_type}; dlkit runs float32 or float16 models")
    return ELEMENT_TYPES[ort_type]


def open_session(path: str | os.PathLike, options: Any, providers: list) -> Any:
    """An ONNX Runtime session; DlkitError naming the file when it cannot be made."""
    import onnxruntime as ort

    from toolkit.artifacts.runner import first_line

    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:
        raise DlkitError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from exc


def cuda_session(
    path: str | os.PathLike,
    options: Any,
    tensorrt: TensorRTSettings | None,
    fixed_batch: int | None,
    conv_algo_search: str = "EXHAUSTIVE",
) -> tuple[Any, int | None]:
    """A session whose first provider is CUDA's (TensorRT's when asked for), replaying a CUDA
    graph when the batch is `fixed_batch` and ONNX Runtime can capture the model. Returns it
    and the batch its graph is for (None: no graph)."""
    import onnxruntime as ort

    from toolkit.devices import cuda_available
    from toolkit.log import logger

    available = ort.get_available_providers() if cuda_available() else []
    graph = bool(fixed_batch) and tensorrt is None  # TensorRT runs its own engines
    try:
        session = _started(path, options, available, tensorrt, graph, conv_algo_search)
    except DlkitError as exc:
        if not graph or "graph" not in str(exc).lower():
            raise
        # Capturing needs every node on the CUDA provider; run the model without a graph.
        logger.warning("warning: %s runs without a CUDA graph: %s", os.path.basename(path), exc)
        graph = False
        session = _started(path, options, available, tensorrt, graph, conv_algo_search)
    return session, fixed_batch if graph else None


def _started(path, options, available, tensorrt, graph: bool, conv_algo_search: str) -> Any:
    providers = execution_providers(available, 0, tensorrt, graph, conv_algo_search)
    session = open_session(path, options, providers)
    if session.get_providers()[0] != providers[0][0]:
        raise DlkitError(
            f"ONNX Runtime could not start {providers[0][0]} (no usable GPU, or its CUDA, cuDNN "
            "or TensorRT libraries are missing); use --device cpu"
        )
    return session


class DeviceBinding:
    """A session run through IO binding: the input in a device buffer (filled from the numpy
    batch through pinned host memory on CUDA), the output in another, both kept and bound while
    the batch size stays. `fixed_batch`: the session replays a CUDA graph, which holds those
    addresses, so any other batch size is refused. On device "cpu" the same binding runs with
    host buffers (what the tests without a GPU check)."""

    def __init__(self, session, device: Any, classes: int, fixed_batch: int | None = None):
        import torch

        from toolkit.pinned import pinned_staging

        self.session, self.classes, self.fixed_batch = session, classes, fixed_batch
        self.device = torch.device(device)
        self.device_id = self.device.index or 0
        self.staging = pinned_staging(self.device)
        first_in, first_out = session.get_inputs()[0], session.get_outputs()[0]
        self.names = (first_in.name, first_out.name)
        self.types = (element_type(first_in.type, "input"), element_type(first_out.type, "output"))
        self.binding = session.io_binding()
        self._buffers: tuple[Any, Any] | None = None

    def buffers(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """The bound device input and output for a batch of `shape`: the same tensors while
        the shape stays (a CUDA graph replays on their addresses)."""
        import numpy as np
        import torch

        if self._buffers is not None and tuple(self._buffers[0].shape) == shape:
            return self._buffers
        if self.fixed_batch is not None and shape[0] != self.fixed_batch:
            raise DlkitError(
                f"this ONNX Runtime session replays a CUDA graph captured for batches of "
                f"{self.fixed_batch}; got {shape[0]}"
            )
        x = torch.empty(shape, dtype=getattr(torch, self.types[0]), device=self.device)
        rows = (shape[0], self.classes)
        y = torch.empty(rows, dtype=getattr(torch, self.types[1]), device=self.device)
        for bind, name, dtype, tensor in (
            (self.binding.bind_input, self.names[0], self.types[0], x),
            (self.binding.bind_output, self.names[1], self.types[1], y),
        ):
            kind = self.device.type
            bind(
                name,
                kind,
                self.device_id,
                getattr(np, dtype),
                list(tensor.shape),
                tensor.data_ptr(),
            )
        self._buffers = (x, y)
        return x, y

    def _launch(self) -> None:
        import torch

        if self.device.type == "cuda":
            # ONNX Runtime computes on its own stream: what torch queued into the input first.
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(self.binding)  # returns when its stream is done

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a numpy batch: host to device, the model, device to host."""
        import numpy as np
        import torch

        x, y = self.buffers(tuple(batch.shape))
        staged = self.staging.to_device(batch) if self.staging else torch.from_numpy(batch)
        x.copy_(staged)  # on the device; casts to fp16 for fp16 inputs
        self._launch()
        logits = self.staging.to_host(y) if self.staging else y.numpy().copy()
        return logits.astype(np.float32, copy=False)

    def device_call(self, batch: np.ndarray) -> Callable[[], Any]:
        """The model alone, on `batch` already in the bound device input (for timing)."""
        import numpy as np
        import torch

        x, _ = self.buffers(tuple(batch.shape))
        x.copy_(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return self._launch
