"""ONNX: metadata in `metadata_props`, export with torch's dynamo exporter, the ONNX Runtime
runner (CPU; CUDA/TensorRT providers only when they really start here), the variants made from
an ONNX file (dynamic and static int8, fp16), and Triton's onnxruntime backend.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.artifacts.format_plugin import (
    FileVariant,
    FormatPlugin,
    ModelProfile,
    Tensor,
    TritonNative,
)
from toolkit.artifacts.metadata import ArtifactInfo, parse_info
from toolkit.artifacts.onnx_cuda import DeviceBinding, TensorRTSettings, cuda_session, open_session
from toolkit.artifacts.runner import Runner, check_scores, first_line
from toolkit.choices import Device, Format, Precision, QuantizeMode
from toolkit.errors import DlkitError

if TYPE_CHECKING:
    import numpy as np
    import onnx

METADATA_KEY = "dlkit"
DEFAULT_OPSET = 18
GRAPH_OPTIMIZATIONS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
# ONNX element types Triton can take, by their TensorProto number.
TRITON_DTYPES = {
    1: "TYPE_FP32",
    10: "TYPE_FP16",
    16: "TYPE_BF16",
    11: "TYPE_FP64",
    3: "TYPE_INT8",
    2: "TYPE_UINT8",
    7: "TYPE_INT64",
}
# Dynamic int8 quantizes Linear layers' MatMul/Gemm well but turns convolutions into slow
# ConvInteger: it is offered by default only where Linear layers do most of the work.
DYNAMIC_INT8_LINEAR_SHARE = 0.5


def load_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """The ONNX graph without its external data (metadata and signatures only)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise DlkitError(f"{path} is not a readable ONNX model: {first_line(exc)}") from exc


def read_info(path: str | os.PathLike) -> ArtifactInfo:
    props = {p.key: p.value for p in load_model_proto(path).metadata_props}
    return parse_info(props.get(METADATA_KEY), path)


def write_info(path: str | os.PathLike, info: ArtifactInfo) -> None:
    """Store `info` in an ONNX file's `metadata_props`, replacing earlier dlkit metadata."""
    import onnx

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
    import onnx
    import torch

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
    import onnxruntime as ort

    from toolkit.devices import cuda_available

    if not cuda_available():
        return []
    wanted = ["TensorrtExecutionProvider"] if tensorrt else []
    wanted.append("CUDAExecutionProvider")
    return [p for p in wanted if p in ort.get_available_providers()]


class OnnxRunner(Runner):
    """An ONNX file through ONNX Runtime: the CPU provider, or CUDA (and TensorRT on request)
    when this machine really has them — a provider that fails to start is an error, not a
    silent fall back to the CPU.

    On CUDA the session runs through IO binding (`toolkit.artifacts.onnx_cuda.DeviceBinding`):
    input and output in device buffers, host copies through pinned memory, and
    `device_call(batch)` for timing the model alone. `cuda_graph_batch` (or a fixed batch in
    the file) makes it replay a CUDA graph for that batch size; a model ONNX Runtime cannot
    capture (some nodes outside the CUDA provider) runs without one, with a warning.
    `tensorrt`: True or `TensorRTSettings` puts TensorRT's provider first.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        optimization: str = "all",
        tensorrt: bool | TensorRTSettings = False,
        cuda_graph_batch: int | None = None,
        conv_algo_search: str = "EXHAUSTIVE",
    ):
        import onnxruntime as ort

        device = Device.parse(device, "device")
        if device == Device.AUTO:
            device = Device.CUDA if gpu_providers() else Device.CPU
        if optimization not in GRAPH_OPTIMIZATIONS:
            raise DlkitError(f"graph optimization must be one of {', '.join(GRAPH_OPTIMIZATIONS)}")
        self.info = read_info(path)
        options = ort.SessionOptions()
        level = GRAPH_OPTIMIZATIONS[optimization]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: provider fall-backs are checked below
        self.cuda: DeviceBinding | None = None
        if device != Device.CUDA:
            self.session = open_session(path, options, ["CPUExecutionProvider"])
        else:
            settings = TensorRTSettings() if tensorrt is True else (tensorrt or None)
            fixed = self.info.static_batch or cuda_graph_batch
            self.session, fixed = cuda_session(path, options, settings, fixed, conv_algo_search)
            self.cuda = DeviceBinding(self.session, "cuda:0", self.info.num_classes, fixed)
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        check_scores(tuple(self.session.get_outputs()[0].shape), None, self.info, str(path))

    @property
    def cuda_graph(self) -> bool:
        return self.cuda is not None and self.cuda.fixed_batch is not None

    def run(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        if self.cuda is not None:
            return self.cuda.run(batch)
        return self.session.run(None, {self.input_name: batch})[0].astype(np.float32, copy=False)

    def device_call(self, batch: np.ndarray):
        """The model alone on `batch` already on the GPU (None on the CPU): its CUDA-event time
        is ONNX Runtime's run, which ends by waiting for its own stream."""
        return self.cuda.device_call(batch) if self.cuda is not None else None


# ---------------------------------------------------------------------------- the variants


def _export(target: Path, parent, info: ArtifactInfo, context) -> dict[str, Any]:
    return export(context.model, info, target, context.example(), **context.options(Format.ONNX))


def _transform(mode: QuantizeMode):
    """The make of a variant that ONNX Runtime's tools derive from the fp32 file."""

    def make(target: Path, parent: Path, info: ArtifactInfo, context) -> dict[str, Any]:
        from toolkit.artifacts.onnx_quantize import quantize_onnx

        extra: dict[str, Any] = {}
        calibration = None
        if mode == QuantizeMode.STATIC:
            calibration = context.calibration()
            extra = {"calibration_samples": len(calibration), "calibration": context.calibrated_on}
        details = extra | quantize_onnx(parent, target, mode, calibration)
        write_info(target, info.derive(quantization={"mode": str(mode), **details}))
        return details

    return make


def _linear_heavy(profile: ModelProfile) -> bool:
    return profile.linear_share >= DYNAMIC_INT8_LINEAR_SHARE


# ------------------------------------------------------------------------------- Triton


def _refuse_external_data(path: str | os.PathLike, graph) -> None:
    """Triton gets `model.onnx` alone: weights kept in other files (ONNX external data)
    would be missing there, or, named with a path, read from anywhere on the server."""
    tensors = [*graph.initializer]
    for node in graph.node:
        for attribute in node.attribute:
            tensors += [attribute.t, *attribute.tensors]
    external = [t.name for t in tensors if t.data_location == t.EXTERNAL]
    if external:
        raise DlkitError(
            f"{path} keeps {len(external)} tensor(s) in separate files (ONNX external data, "
            f"e.g. {external[0]!r}); Triton would get model.onnx alone. Export it as one file "
            "(`dlkit export`, or onnx.save(model, path, save_as_external_data=False))"
        )


def graph_tensors(path: str | os.PathLike, info: ArtifactInfo) -> tuple[Tensor, Tensor]:
    """Input and output as an ONNX graph declares them, the batch dimension left to Triton
    when it is dynamic."""
    graph = load_model_proto(path).graph
    _refuse_external_data(path, graph)
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise DlkitError(
            f"{path}: expected one input and one output, found {len(inputs)} and "
            f"{len(graph.output)}; export it with `dlkit export`"
        )

    def tensor(value) -> Tensor:
        t = value.type.tensor_type
        dtype = TRITON_DTYPES.get(t.elem_type)
        if dtype is None:
            raise DlkitError(f"{path}: tensor {value.name} has an unsupported type {t.elem_type}")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return Tensor(value.name, dtype, dims)

    return batchless(path, tensor(inputs[0]), tensor(graph.output[0]), info)


def batchless(path, tin: Tensor, tout: Tensor, info: ArtifactInfo) -> tuple[Tensor, Tensor]:
    """Drop a dynamic batch dimension (Triton owns it) and check what is left: only the batch
    may be dynamic, and the output has one score per class."""
    if tin.dims and tin.dims[0] == -1:
        tin = Tensor(tin.name, tin.dtype, tin.dims[1:])
        tout = Tensor(tout.name, tout.dtype, tout.dims[1:])
    if any(d < 1 for d in tin.dims + tout.dims):
        raise DlkitError(f"{path}: only the batch dimension may be dynamic; got {tin.dims}")
    if tout.dims[-1:] != (info.num_classes,):
        raise DlkitError(
            f"{path}: the model answers {tout.dims} outputs but its metadata lists "
            f"{info.num_classes} classes"
        )
    return tin, tout


def _stub_runner(path, params, gpu, device_id):
    """ONNX Runtime inside Triton's python backend (needs only numpy and onnxruntime). On a
    GPU instance: the CUDA provider (the model fails to load without it rather than run on the
    CPU), run through IO binding so the output stays on the GPU until the one copy back; cuDNN's
    heuristic convolution search, as every dynamic batch may bring a new batch size."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(params.get("intra_op_thread_count", "0"))
    options.inter_op_num_threads = int(params.get("inter_op_thread_count", "0"))
    providers = ["CPUExecutionProvider"]
    if gpu:
        if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia pip packages (torch's)
            ort.preload_dlls()
        search = params.get("cudnn_conv_algo_search", "HEURISTIC")
        cuda = {"device_id": str(device_id), "cudnn_conv_algo_search": search}
        providers.insert(0, ("CUDAExecutionProvider", cuda))
    session = ort.InferenceSession(path, options, providers=providers)
    if gpu and session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"ONNX Runtime could not start its CUDA provider for {path}")
    feed, fetch = session.get_inputs()[0].name, session.get_outputs()[0].name

    def run(batch):
        return np.asarray(session.run(None, {feed: batch})[0], dtype=np.float32)

    if not gpu:
        return run
    binding = session.io_binding()

    def run_bound(batch):
        binding.bind_cpu_input(feed, np.ascontiguousarray(batch))  # copied to the GPU once
        binding.bind_output(fetch, "cuda", int(device_id))
        session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    return run_bound


class OnnxPlugin(FormatPlugin):
    name = Format.ONNX
    suffix = ".onnx"
    devices = (Device.CPU, Device.CUDA)
    exportable = True
    triton = TritonNative(
        platform="onnxruntime_onnx",
        server_backend="onnxruntime",
        model_file="model.onnx",
        parameters=("intra_op_thread_count", "inter_op_thread_count"),
    )
    # The onnxruntime backend's execution providers: OpenVINO's on the CPU, TensorRT's on GPUs.
    accelerators = ("openvino", "tensorrt")
    stub_runner = staticmethod(_stub_runner)

    def sniff(self, path: Path, head: bytes) -> bool:
        # protobuf field 1 (ir_version, a varint), as every ONNX file starts
        return path.suffix.lower() == ".onnx" or head[:1] == b"\x08"

    def read_info(self, path: str | os.PathLike) -> ArtifactInfo:
        return read_info(path)

    def open_runner(
        self, path: str | os.PathLike, device: str = "cpu", objective: str | None = None, **options
    ) -> Runner:
        return OnnxRunner(path, device=device, **options)

    def fixed_batch_options(self, device: str, batch_size: int) -> dict[str, Any]:
        # One batch size: static shapes, so the CUDA provider can replay a graph.
        return {"cuda_graph_batch": batch_size} if device == Device.CUDA else {}

    def unavailable(self, device: str) -> str:
        if device == Device.CUDA and not gpu_providers():
            return "ONNX Runtime has no CUDA provider here (onnxruntime-gpu runs ONNX on the GPU)"
        return super().unavailable(device)

    def variants(self) -> tuple[FileVariant, ...]:
        fp32 = "onnx-fp32"
        return (
            FileVariant(
                name=fp32,
                description="ONNX Runtime fp32 from `dlkit export`, all graph optimisations",
                format=self.name,
                make=_export,
                devices=self.devices,
            ),
            FileVariant(
                name="onnx-int8-dynamic",
                description="ONNX Runtime, dynamic int8 (`dlkit quantize`); offered by default "
                "for models whose Linear layers do most of the work",
                format=self.name,
                precision=Precision.INT8,
                parent=fp32,
                make=_transform(QuantizeMode.DYNAMIC),
                simplicity=2,
                suits=_linear_heavy,
            ),
            FileVariant(
                name="onnx-int8-static",
                description="ONNX Runtime, static int8 QDQ, per-channel, calibrated "
                "(`dlkit quantize`)",
                format=self.name,
                precision=Precision.INT8,
                parent=fp32,
                make=_transform(QuantizeMode.STATIC),
                simplicity=3,
            ),
            FileVariant(
                name="onnx-fp16",
                description="ONNX Runtime, fp16 weights and activations",
                format=self.name,
                precision=Precision.FP16,
                parent=fp32,
                make=_transform(QuantizeMode.FP16),
                simplicity=2,
                devices=(Device.CUDA,),
                cuda_only=True,
            ),
        )

    def io_tensors(self, path, info: ArtifactInfo, native: bool) -> tuple[Tensor, Tensor]:
        return graph_tensors(path, info)

    def triton_parameters(self, threads: int, inter_op_threads: int, info: ArtifactInfo) -> dict:
        # ONNX Runtime backend parameters; 0: every core
        return {"intra_op_thread_count": threads, "inter_op_thread_count": inter_op_threads}


PLUGIN = OnnxPlugin()
