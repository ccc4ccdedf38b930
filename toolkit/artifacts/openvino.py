"""OpenVINO IR: `best.openvino.xml` with its weights in `best.openvino.bin`, dlkit's metadata in
the IR's `rt_info`; made by converting dlkit's ONNX files (the fp32 export, and the calibrated
QDQ int8 file, which OpenVINO runs with its own int8 kernels); run by OpenVINO's CPU plugin at
the precision the metadata names; served by Triton's openvino backend (NGC image) or by
OpenVINO inside the python backend (the pip-installed server).

On CPUs with native bf16 (AVX-512 BF16, AMX) OpenVINO computes fp32 models in bf16 unless told
otherwise (measured with OpenVINO 2026.4 on an AMD EPYC with AVX-512 BF16): dlkit always sets
the inference precision, so `openvino-fp32` is fp32 and `openvino-bf16` is its own variant,
offered only where bf16 is native.

The `openvino` package is imported only where it is used; without it the variants are skipped
with the reason.
"""

from __future__ import annotations

import functools
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.artifacts.format_plugin import FileVariant, FormatPlugin, Tensor, TritonNative
from toolkit.artifacts.metadata import ArtifactInfo, parse_info
from toolkit.artifacts.runner import Runner, first_line
from toolkit.choices import Device, Objective, Precision
from toolkit.errors import DlkitError

if TYPE_CHECKING:
    import numpy as np

    from toolkit.cpu import CpuFeatures

RT_INFO_KEY = "dlkit"
MAX_XML_BYTES = 256 * 1024 * 1024
# The precision OpenVINO computes in, from the artifact's own precision: int8 IR runs its
# quantized layers in int8 and the rest in fp32 (bf16 there measured no faster).
INFERENCE_PRECISION = {Precision.FP32: "f32", Precision.INT8: "f32", Precision.BF16: "bf16"}
HINTS = {Objective.LATENCY: "LATENCY", Objective.THROUGHPUT: "THROUGHPUT"}
TRITON_DTYPES = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "bf16": "TYPE_BF16", "i64": "TYPE_INT64"}


@functools.cache
def _core():
    import openvino as ov

    return ov.Core()


def weights_path(xml: str | os.PathLike) -> Path:
    """The `.bin` file that holds an IR's weights (OpenVINO reads it from beside the `.xml`)."""
    return Path(xml).with_suffix(".bin")


def read_info(path: str | os.PathLike) -> ArtifactInfo:
    """dlkit's metadata from the IR's net-level `rt_info`, read as XML (no OpenVINO, no
    weights): `<net><rt_info><dlkit value="..."/>`."""
    path = Path(path)
    if path.stat().st_size > MAX_XML_BYTES:
        raise DlkitError(f"{path} is {path.stat().st_size} bytes; no IR description is that large")
    depth, value = 0, None
    try:
        for event, element in ElementTree.iterparse(path, events=("start", "end")):
            if event == "end":
                depth -= 1
                if depth == 1 and element.tag == "rt_info":
                    break
                continue
            depth += 1
            if depth == 1 and element.tag != "net":
                raise DlkitError(f"{path} is XML but not an OpenVINO IR (<{element.tag}>)")
            if depth == 3 and element.tag == RT_INFO_KEY:
                value = element.get("value")
    except ElementTree.ParseError as exc:
        raise DlkitError(f"{path} is not a readable OpenVINO IR: {exc}") from None
    return parse_info(value, path)


def save(model, target: str | os.PathLike, info: ArtifactInfo) -> None:
    """Write an OpenVINO model as IR at `target` (+ its .bin), carrying `info`."""
    import openvino as ov

    model.set_rt_info(info.to_json(), [RT_INFO_KEY])
    ov.save_model(model, str(target), compress_to_fp16=False)


def _convert(target: Path, parent: Path, info: ArtifactInfo, context) -> dict[str, Any]:
    """The IR of an ONNX file, as it is: fp32 stays fp32, a QDQ file becomes int8 layers."""
    import openvino as ov

    try:
        model = ov.convert_model(str(parent))
    except Exception as exc:
        raise DlkitError(f"OpenVINO cannot convert {parent.name}: {first_line(exc)}") from exc
    save(model, target, info)
    return {"converted_from": parent.name, "openvino": ov.get_version()}


def _at_precision(target: Path, parent: Path, info: ArtifactInfo, context) -> dict[str, Any]:
    """A copy of the fp32 IR whose metadata asks for another inference precision."""
    save(_core().read_model(str(parent)), target, info)
    return {"inference_precision": INFERENCE_PRECISION[info.precision]}


def _native_bf16(cpu: CpuFeatures) -> str:
    if cpu.bf16:
        return ""
    return "this CPU has no native bf16 (AVX-512 BF16 or AMX): OpenVINO would emulate it"


def compile_config(info: ArtifactInfo, threads: int | None, objective: str | None) -> dict:
    """OpenVINO CPU properties for running `info`'s artifact as dlkit means it: its precision,
    `threads` inference threads, and the latency (one stream) or throughput hint."""
    objective = Objective.parse(objective or Objective.LATENCY, "objective")
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION.get(info.precision, "f32"),
        "PERFORMANCE_HINT": HINTS[objective],
    }
    if objective == Objective.LATENCY:
        config["NUM_STREAMS"] = 1
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoRunner(Runner):
    """An IR on OpenVINO's CPU plugin, compiled once with `compile_config`."""

    name = "openvino"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        objective: str | None = None,
    ):
        if Device.parse(device, "device") == Device.CUDA:
            raise DlkitError("OpenVINO runs on the CPU here; use --device cpu")
        self.info = read_info(path)
        self.config = compile_config(self.info, threads, objective)
        try:
            compiled = _core().compile_model(str(path), "CPU", self.config)
        except Exception as exc:
            raise DlkitError(f"OpenVINO cannot load {path}: {first_line(exc)}") from exc
        self.request = compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        self.request.infer({0: batch}, share_inputs=True)
        # The output tensor is OpenVINO's memory, reused by the next call: copy it out.
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)


def _stub_runner(path, params, gpu, device_id):
    """OpenVINO inside Triton's python backend (needs only numpy and openvino)."""
    import numpy as np
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": params.get("inference_precision", "f32"),
        "PERFORMANCE_HINT": params.get("performance_hint", "LATENCY"),
    }
    threads = int(params.get("intra_op_thread_count", "0"))
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if config["PERFORMANCE_HINT"] == "LATENCY":
        config["NUM_STREAMS"] = 1
    request = ov.Core().compile_model(path, "CPU", config).create_infer_request()

    def run(batch):
        request.infer({0: batch}, share_inputs=True)
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    return run


class OpenVinoPlugin(FormatPlugin):
    name = "openvino"
    suffix = ".openvino.xml"
    exportable = True
    triton = TritonNative(
        backend="openvino",
        server_backend="openvino",
        model_file="model.xml",
        companions=("model.bin",),
        parameters=(
            "PERFORMANCE_HINT",
            "NUM_STREAMS",
            "INFERENCE_NUM_THREADS",
            "HINT_BF16",
            "inference_precision",
            "intra_op_thread_count",
            "inter_op_thread_count",
        ),
    )
    stub_runner = staticmethod(_stub_runner)

    def sniff(self, path: Path, head: bytes) -> bool:
        return path.suffix.lower() == ".xml" and (b"<net" in head or head.startswith(b"<?xml"))

    def files(self, path: str | os.PathLike) -> list[Path]:
        return [Path(path), weights_path(path)]

    def read_info(self, path: str | os.PathLike) -> ArtifactInfo:
        return read_info(path)

    def open_runner(self, path: str | os.PathLike, device: str = "cpu", **options) -> Runner:
        if not weights_path(path).is_file():
            raise DlkitError(f"{path} has no {weights_path(path).name} beside it (its weights)")
        return OpenVinoRunner(path, device=device, **options)

    def unavailable(self, device: str) -> str:
        if not _installed():
            return "OpenVINO is not installed here (pip install openvino)"
        return super().unavailable(device)

    def variants(self) -> tuple[FileVariant, ...]:
        fp32 = "openvino-fp32"
        return (
            FileVariant(
                name=fp32,
                description="OpenVINO fp32 (IR converted from the fp32 ONNX file)",
                format=self.name,
                parent="onnx-fp32",
                make=_convert,
                simplicity=1,
            ),
            FileVariant(
                name="openvino-bf16",
                description="OpenVINO, bf16 inference precision (CPUs with AVX-512 BF16 or AMX)",
                format=self.name,
                precision=Precision.BF16,
                parent=fp32,
                make=_at_precision,
                simplicity=2,
                needs=_native_bf16,
            ),
            FileVariant(
                name="openvino-int8",
                description="OpenVINO int8 (IR of the calibrated static int8 QDQ ONNX file)",
                format=self.name,
                precision=Precision.INT8,
                parent="onnx-int8-static",
                make=_convert,
                simplicity=3,
            ),
        )

    def triton_files(self, path: str | os.PathLike) -> dict[str, Path]:
        return dict(zip(self.triton.files, self.files(path), strict=True))

    def io_tensors(self, path, info: ArtifactInfo, native: bool) -> tuple[Tensor, Tensor]:
        from toolkit.artifacts.onnx import batchless

        try:
            model = _core().read_model(str(path))
        except Exception as exc:
            raise DlkitError(f"OpenVINO cannot read {path}: {first_line(exc)}") from exc
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise DlkitError(f"{path}: expected one input and one output")

        def tensor(port) -> Tensor:
            dtype = TRITON_DTYPES.get(port.get_element_type().get_type_name())
            if dtype is None:
                raise DlkitError(f"{path}: tensor {port.get_any_name()} has an unsupported type")
            shape = port.get_partial_shape()
            dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
            return Tensor(port.get_any_name(), dtype, dims)

        return batchless(path, tensor(model.inputs[0]), tensor(model.outputs[0]), info)

    def triton_parameters(self, threads: int, inter_op_threads: int, info: ArtifactInfo) -> dict:
        # Triton's openvino backend reads these keys; it has no way to ask for f32, so on a
        # CPU with native bf16 it computes fp32 IR in bf16 (OpenVINO's default there).
        parameters: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            parameters["INFERENCE_NUM_THREADS"] = threads
        if info.precision == Precision.BF16:
            parameters["HINT_BF16"] = "YES"
        return parameters

    def stub_parameters(self, info: ArtifactInfo) -> dict:
        """What the python-backend runner needs beyond threads."""
        return {"inference_precision": INFERENCE_PRECISION.get(info.precision, "f32")}

    def thread_parameters(self) -> tuple[str, str]:
        return ("INFERENCE_NUM_THREADS", "")


def _installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


PLUGIN = OpenVinoPlugin()
