"""TorchScript artifacts: metadata from the archive, a code check before loading, the runner.

A TorchScript file is a program: `torch.jit.load` runs its `__setstate__` and its `forward`
can call any operator, file-touching ones (`torch.from_file`, `torch.save`) included. dlkit
reads metadata straight from the zip archive without loading anything, and before it loads a
file it reads the file's bytes once, checks them as torch will read them (`ts_archive`: the
code read as code, every reference resolved, refused outside `ALLOWED_OPERATORS`; no
flatbuffers), and loads those same bytes, unless the caller passes `trust=True` (`--trust`).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.artifacts.format_plugin import (
    FileVariant,
    FormatPlugin,
    Tensor,
    TritonNative,
    is_torchscript_archive,
)
from toolkit.artifacts.metadata import ArtifactInfo, parse_info
from toolkit.artifacts.runner import Runner, first_line, set_torch_threads
from toolkit.artifacts.ts_archive import archive_findings, read_records
from toolkit.choices import Device, Format
from toolkit.errors import DlkitError
from toolkit.pinned import pinned_staging

if TYPE_CHECKING:
    import numpy as np

EXTRA_FILE = "dlkit.json"  # the metadata, in the archive's extra/ folder
MAX_CODE_BYTES = 64 * 1024 * 1024

# Operators an exported image classifier calls (convolutions, norms, activations, pooling,
# attention, linear layers, shape and arithmetic helpers, the checks scripting inserts), as
# found in the exports of torchvision's families. Anything else is refused without --trust.
ALLOWED_OPERATORS = frozenset(
    """
    _convolution conv1d conv2d conv3d conv_transpose2d convolution batch_norm layer_norm
    group_norm instance_norm native_batch_norm linear matmul mm addmm bmm einsum relu relu_
    relu6 hardtanh hardtanh_ leaky_relu leaky_relu_ gelu silu silu_ sigmoid sigmoid_
    hardsigmoid hardsigmoid_ hardswish hardswish_ tanh softmax log_softmax elu max_pool2d
    avg_pool2d adaptive_avg_pool2d adaptive_max_pool2d max_pool2d_with_indices mean sum amax
    amin max min flatten reshape view view_as permute transpose contiguous squeeze unsqueeze
    cat stack chunk split narrow select slice expand expand_as repeat add add_ sub sub_ mul
    mul_ div div_ neg pow sqrt rsqrt exp clamp clamp_ clamp_min dropout dropout_
    feature_dropout alpha_dropout size dim len __getitem__ __isnot__ __is__ numel to type_as
    detach clone zeros zeros_like ones ones_like full full_like tensor scalar_tensor Float
    Int Bool floor ceil floordiv eq ne lt le gt ge warn format list append extend keys
    values items __contains__ tuple_index NumToTensor TupleConstruct TupleUnpack
    ListConstruct ListUnpack dtype device unchecked_cast annotate uninitialized isinstance
    RaiseException __not__ _native_multi_head_attention all any is_autocast_enabled
    is_grad_enabled is_nested requires_grad scaled_dot_product_attention type unflatten
    floor_divide __and__ __or__
    """.split()  # noqa: SIM905 (a word list reads better than a 150-line tuple)
)


@contextlib.contextmanager
def jit_deprecation_silenced() -> Iterator[None]:
    """torch 2.14 marks torch.jit deprecated, but TorchScript is still what Triton's PyTorch
    backend serves; silence only those notices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`torch\.jit\.\w+` is deprecated")
        yield


def _archive_text(path: Path, suffix: str) -> dict[str, str]:
    """Text of the archive's members ending in `suffix`, with a size cap."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(suffix)]
            if sum(m.file_size for m in members) > MAX_CODE_BYTES:
                raise DlkitError(f"{path}: its code is implausibly large; not reading it")
            return {m.filename: archive.read(m).decode("utf-8", "replace") for m in members}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DlkitError(f"{path} is not a readable TorchScript file: {exc}") from exc


def read_info(path: str | os.PathLike) -> ArtifactInfo:
    """The dlkit metadata of a TorchScript file, read from the archive (nothing is run)."""
    texts = _archive_text(Path(path), f"/extra/{EXTRA_FILE}")
    return parse_info(next(iter(texts.values()), None), path)


def read_checked(path: str | os.PathLike, trust: bool = False) -> bytes:
    """The file's bytes after the code check (unless `trust`): load these, never the path
    again, so that what was checked is what runs."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DlkitError(f"cannot read {path}: {exc.strerror}") from exc
    if not trust:
        check_bytes(data, path)
    return data


def check_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Refuse a TorchScript file whose code or pickles reach anything outside what an image
    classifier needs (see `ts_archive`: the code is read as code, nothing is run)."""
    try:
        findings = archive_findings(read_records(data), ALLOWED_OPERATORS)
    except DlkitError as exc:
        raise DlkitError(f"{path} {exc}") from None
    if findings:
        raise DlkitError(
            f"{path} calls or builds what an image classifier does not need "
            f"({'; '.join(findings[:5])}{' …' if len(findings) > 5 else ''}); a TorchScript "
            "file is a program and could read or write files. Load it only if you trust where "
            "it came from (--trust)."
        )


def check_code(path: str | os.PathLike, trust: bool = False) -> None:
    """Refuse a TorchScript file whose code reaches anything a classifier does not need."""
    read_checked(path, trust)


def load_torchscript(
    path: str | os.PathLike, map_location: str = "cpu", trust: bool = False
) -> tuple[Any, ArtifactInfo]:
    """A TorchScript module and its dlkit metadata, loaded from the bytes the check read."""
    import torch

    info = read_info(path)
    data = read_checked(path, trust)
    try:
        with jit_deprecation_silenced():
            module = torch.jit.load(io.BytesIO(data), map_location=map_location)
    except Exception as exc:
        raise DlkitError(f"{path} is not a readable TorchScript file: {exc}") from exc
    return module, info


def export(model, info: ArtifactInfo, path: str | os.PathLike, example) -> dict[str, Any]:
    """Trace in eval mode and freeze; script instead when tracing warns that the trace may
    not generalise (data-dependent control flow). Returns `{"method": "trace"|"script"}`."""
    import torch

    method = "trace"
    with jit_deprecation_silenced(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            module = torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:
            module, method = None, f"trace failed ({first_line(exc)})"
        if module is None or any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
            try:
                module, method = torch.jit.script(model), "script"
            except Exception as exc:
                if module is None:
                    raise DlkitError(
                        f"TorchScript export of {info.model.name} failed: tracing and scripting "
                        f"both failed ({first_line(exc)}). The ONNX export (--onnx) may still work."
                    ) from exc
        frozen = torch.jit.freeze(module.eval())
        # Into memory first: torch.jit.save aborts the whole process (a C++ exception out of
        # a destructor) when the disk fills under it; Python's own write raises OSError.
        buffer = io.BytesIO()
        torch.jit.save(frozen, buffer, _extra_files={EXTRA_FILE: info.to_json()})
    Path(path).write_bytes(buffer.getbuffer())
    return {"method": method}


class TorchScriptRunner(Runner):
    """A TorchScript file written by `dlkit export` (code-checked unless `trust`)."""

    name = "torchscript"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        trust: bool = False,
    ):
        from toolkit.devices import resolve_device

        set_torch_threads(threads)
        self.device = resolve_device(device)
        self.module, self.info = load_torchscript(path, str(self.device), trust)
        self.staging = pinned_staging(self.device)

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = self.staging.to_device(batch) if self.staging else torch.from_numpy(batch)
        with torch.inference_mode():
            logits = self.module(x).float()
            return self.staging.to_host(logits) if self.staging else logits.numpy()


def check_forward(path: Path, info: ArtifactInfo, trust: bool = False) -> None:
    """TorchScript declares no output shape, so a Triton config comes from the metadata: load
    the file and run it on zeros, as Triton's warm-up will (after its code check, unless
    `trust`), in a child process under the model timeout, and check that it answers one score
    per class."""
    from toolkit.artifacts.isolated import run_isolated

    batch = info.static_batch or 1
    shape = run_isolated(
        _zeros_answer, str(path), trust, what=str(path), doing="loading it and a batch of zeros"
    )
    if shape != (batch, info.num_classes):
        raise DlkitError(
            f"{path} answers {shape} for a batch of {batch}, but its metadata lists "
            f"{info.num_classes} classes; re-export it with `dlkit export`"
        )


def _zeros_answer(path: str, trust: bool) -> tuple[int, ...] | str:
    """The shape of what the file answers to zeros shaped and typed as its metadata says (the
    type's name when it is no tensor); run in the child of `check_forward`."""
    import torch

    module, info = load_torchscript(path, trust=trust)
    batch = info.static_batch or 1
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(
        info.input_dtype, torch.float32
    )
    zeros = torch.zeros((batch, *info.preprocessing.input_shape), dtype=dtype)
    try:
        with torch.inference_mode():
            out = module(zeros)
    except Exception as exc:
        raise DlkitError(
            f"{path} fails on a batch of zeros shaped as its metadata says "
            f"({batch}, {', '.join(map(str, info.preprocessing.input_shape))}): "
            f"{first_line(exc)}"
        ) from None
    return tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__


# ------------------------------------------------------------------------- plugin, Triton

# Triton's TYPE_* for the metadata's input dtype (TorchScript declares no signature).
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}
MAX_STATIC_BATCH = 65536


def _export(target: Path, parent, info: ArtifactInfo, context) -> dict[str, Any]:
    return export(context.model, info, target, context.example())


def _stub_runner(path, params, gpu, device_id):
    """TorchScript inside Triton's python backend (needs only numpy and torch). On a GPU
    instance the module is moved there once, at load; each batch goes up and its logits come
    back through pinned host buffers kept between calls (grown to the largest batch)."""
    import numpy as np
    import torch

    intra = int(params.get("intra_op_thread_count", "0"))
    inter = int(params.get("inter_op_thread_count", "0"))
    if intra:
        torch.set_num_threads(intra)
    if inter:
        torch.set_num_interop_threads(inter)
    device = torch.device(f"cuda:{device_id}" if gpu else "cpu")
    module = torch.jit.load(path, map_location=device).eval()

    def run(batch):
        if not batch.flags.writeable:  # a view of Triton's shared memory: torch wants its own
            batch = batch.copy()
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).float().numpy()

    if not gpu:
        return run
    pinned = {}

    def buffer(key, count, dtype):
        held = pinned.get(key)
        if held is None or held.dtype != dtype or held.numel() < count:
            held = pinned[key] = torch.empty(count, dtype=dtype, pin_memory=True)
        return held[:count]

    def run_on_gpu(batch):
        host = buffer("in", batch.size, torch.from_numpy(np.empty(0, batch.dtype)).dtype)
        np.copyto(host.numpy(), batch.reshape(-1))  # also from a read-only view: no copy first
        with torch.inference_mode():
            logits = module(host.view(batch.shape).to(device, non_blocking=True)).float()
            out = buffer("out", logits.numel(), torch.float32)
            out.copy_(logits.reshape(-1), non_blocking=True)
            torch.cuda.current_stream(device).synchronize()
        return out.numpy().reshape(tuple(logits.shape)).copy()

    return run_on_gpu


class TorchScriptPlugin(FormatPlugin):
    name = Format.TORCHSCRIPT
    suffix = ".torchscript.pt"
    runs_code = True  # open_runner takes `trust`
    devices = (Device.CPU, Device.CUDA)
    exportable = True
    triton = TritonNative(
        platform="pytorch_libtorch",
        server_backend="pytorch",
        model_file="model.pt",
        parameters=(
            "INFERENCE_MODE",
            "INTRA_OP_THREAD_COUNT",
            "INTER_OP_THREAD_COUNT",
            "intra_op_thread_count",
            "inter_op_thread_count",
        ),
    )
    stub_runner = staticmethod(_stub_runner)

    def sniff(self, path: Path, head: bytes) -> bool:
        return is_torchscript_archive(path)

    def read_info(self, path: str | os.PathLike) -> ArtifactInfo:
        return read_info(path)

    def open_runner(
        self, path: str | os.PathLike, device: str = "cpu", objective: str | None = None, **options
    ) -> Runner:
        return TorchScriptRunner(path, device=device, **options)

    def check_before_serving(self, path: Path, info: ArtifactInfo, trust: bool) -> None:
        check_forward(path, info, trust)  # Triton will run this file

    def audit(self, path: Path) -> str:
        try:
            check_bytes(path.read_bytes(), path)
        except DlkitError as exc:
            return str(exc).split("; a TorchScript file is a program")[0]
        return ""

    def variants(self) -> tuple[FileVariant, ...]:
        return (
            FileVariant(
                name="torchscript-fp32",
                description="frozen TorchScript from `dlkit export`, fp32",
                format=self.name,
                make=_export,
                simplicity=1,
                devices=self.devices,
            ),
        )

    def io_tensors(self, path, info: ArtifactInfo, native: bool) -> tuple[Tensor, Tensor]:
        """TorchScript has no named signature: shapes come from the metadata, and names follow
        the native PyTorch backend's `INPUT__0`/`OUTPUT__0` convention there."""
        dtype = TRITON_DTYPES.get(info.input_dtype, "TYPE_FP32")
        shape = info.preprocessing.input_shape
        if info.static_batch is not None and not 1 <= info.static_batch <= MAX_STATIC_BATCH:
            raise DlkitError(f"{path}: its metadata gives a fixed batch of {info.static_batch}")
        if info.static_batch:
            dims_in, dims_out = (info.static_batch, *shape), (info.static_batch, info.num_classes)
        else:
            dims_in, dims_out = shape, (info.num_classes,)
        names = ("INPUT__0", "OUTPUT__0") if native else ("input", "logits")
        return Tensor(names[0], dtype, dims_in), Tensor(names[1], "TYPE_FP32", dims_out)

    def triton_parameters(self, threads: int, inter_op_threads: int, info: ArtifactInfo) -> dict:
        return {
            "INFERENCE_MODE": "true",
            "INTRA_OP_THREAD_COUNT": threads,
            "INTER_OP_THREAD_COUNT": inter_op_threads,
        }

    def thread_parameters(self) -> tuple[str, str]:
        return ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT")


PLUGIN = TorchScriptPlugin()
