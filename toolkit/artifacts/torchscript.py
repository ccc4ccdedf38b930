"""TorchScript artifacts: metadata from the archive, a code check before loading, the runner.

A TorchScript file is a program: `torch.jit.load` runs its `__setstate__` and its `forward`
can call any operator, file-touching ones (`torch.from_file`, `torch.save`) included. dlkit
reads metadata straight from the zip archive without loading anything, and before it loads a
file it reads the archive's code (stored as text) and refuses any operator outside what an
image classifier needs, unless the caller passes `trust=True` (`--trust`).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.artifacts.metadata import ArtifactInfo, parse_info
from toolkit.artifacts.runner import Runner, first_line, set_torch_threads
from toolkit.choices import Format
from toolkit.devices import resolve_device
from toolkit.errors import DlkitError

EXTRA_FILE = "dlkit.json"  # the metadata, in the archive's extra/ folder
MAX_CODE_BYTES = 64 * 1024 * 1024
FORWARD_CHECK_SECONDS = 60.0  # for one batch of zeros; an image classifier takes well under 1 s

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
    floor_divide
    """.split()  # noqa: SIM905 (a word list reads better than a 150-line tuple)
)
_CALL = re.compile(r"\b(?:torch|ops\.\w+)\.(\w+)\s*\(")


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


def unsafe_operators(path: str | os.PathLike) -> list[str]:
    """Operators the archive's code calls that are not on the classifier allowlist."""
    found: set[str] = set()
    for text in _archive_text(Path(path), ".py").values():
        found.update(_CALL.findall(text))
    return sorted(found - ALLOWED_OPERATORS)


def check_code(path: str | os.PathLike, trust: bool = False) -> None:
    """Refuse a TorchScript file whose code calls operators a classifier does not need."""
    if trust:
        return
    unsafe = unsafe_operators(path)
    if unsafe:
        raise DlkitError(
            f"{path} calls operators an image classifier does not need ({', '.join(unsafe[:5])}"
            f"{' …' if len(unsafe) > 5 else ''}); a TorchScript file is a program and could "
            "read or write files. Load it only if you trust where it came from (--trust)."
        )


def load_torchscript(
    path: str | os.PathLike, map_location: str = "cpu", trust: bool = False
) -> tuple[Any, ArtifactInfo]:
    """A TorchScript module and its dlkit metadata, after the code check."""
    info = read_info(path)
    check_code(path, trust)
    try:
        with jit_deprecation_silenced():
            module = torch.jit.load(str(path), map_location=map_location)
    except Exception as exc:
        raise DlkitError(f"{path} is not a readable TorchScript file: {exc}") from exc
    return module, info


def export(model, info: ArtifactInfo, path: str | os.PathLike, example) -> dict[str, Any]:
    """Trace in eval mode and freeze; script instead when tracing warns that the trace may
    not generalise (data-dependent control flow). Returns `{"method": "trace"|"script"}`."""
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
        set_torch_threads(threads)
        self.device = resolve_device(device)
        self.module, self.info = load_torchscript(path, str(self.device), trust)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


class Handler:
    suffix = ".torchscript.pt"
    format = Format.TORCHSCRIPT
    runs_code = True  # open_runner takes `trust`

    def read_info(self, path: str | os.PathLike) -> ArtifactInfo:
        return read_info(path)

    def open_runner(self, path: str | os.PathLike, device: str = "cpu", **options: Any) -> Runner:
        return TorchScriptRunner(path, device=device, **options)

    def export(self, model, info, path, example, **options: Any) -> dict[str, Any]:
        return export(model, info, path, example)


def check_forward(path: Path, info: ArtifactInfo, trust: bool = False) -> None:
    """TorchScript declares no output shape, so a Triton config comes from the metadata: run
    the file (after its code check, unless `trust`) on zeros, as Triton's warm-up will, and
    check that it answers one score per class within `FORWARD_CHECK_SECONDS`."""
    module, _ = load_torchscript(path, trust=trust)
    batch = info.static_batch or 1
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(
        info.input_dtype, torch.float32
    )
    zeros = torch.zeros((batch, *info.preprocessing.input_shape), dtype=dtype)
    try:
        out = _within(FORWARD_CHECK_SECONDS, lambda: _infer(module, zeros))
    except TimeoutError:
        raise DlkitError(
            f"{path} did not answer a batch of zeros within {FORWARD_CHECK_SECONDS:g} s (a "
            "forward that never ends would hang Triton's warm-up too); nothing was written"
        ) from None
    except Exception as exc:
        raise DlkitError(
            f"{path} fails on a batch of zeros shaped as its metadata says "
            f"({batch}, {', '.join(map(str, info.preprocessing.input_shape))}): "
            f"{first_line(exc)}"
        ) from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (batch, info.num_classes):
        raise DlkitError(
            f"{path} answers {shape} for a batch of {batch}, but its metadata lists "
            f"{info.num_classes} classes; re-export it with `dlkit export`"
        )


def _infer(module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():  # per thread: set where the forward runs
        return module(batch)


def _within(seconds: float, call):
    """`call()`'s result, run on a daemon thread given `seconds` to finish; TimeoutError when
    it has not (the thread is left to the process's exit: a Python thread cannot be killed)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=run, name="dlkit-forward-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError
    if "error" in result:
        raise result["error"]
    return result["value"]
