"""The one place that knows the formats: how to recognise each, and which module handles it.

A format module (`toolkit.artifacts.onnx`, say) defines a `Handler` with:

    read_info(path) -> ArtifactInfo                  the metadata, without running the model
    open_runner(path, device, **options) -> Runner   the model, ready to call
    export(model, info, path, example, **options)    (exportable formats) write the file

Handlers are imported only when a file of their format is used, so recognising a file never
loads torch or ONNX. Adding a runtime is one module with a Handler and one entry in
`FORMATS` (plus its variants in `toolkit.variants.registry`).
"""

from __future__ import annotations

import importlib
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from toolkit.choices import Format
from toolkit.errors import DlkitError

if TYPE_CHECKING:
    from toolkit.artifacts.metadata import ArtifactInfo
    from toolkit.artifacts.runner import Runner


class Handler(Protocol):
    suffix: str

    def read_info(self, path: str | os.PathLike) -> ArtifactInfo: ...

    def open_runner(
        self, path: str | os.PathLike, device: str = "cpu", **options: Any
    ) -> Runner: ...


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DlkitError(f"{path} is a damaged archive: {exc}") from exc


def _is_torchscript(path: Path, head: bytes) -> bool:
    return zipfile.is_zipfile(path) and any("/code/" in n for n in _zip_names(path))


def _is_checkpoint(path: Path, head: bytes) -> bool:
    return zipfile.is_zipfile(path) and not _is_torchscript(path, head)


def _is_onnx(path: Path, head: bytes) -> bool:
    # protobuf field 1 (ir_version, a varint), as every ONNX file starts
    return path.suffix.lower() == ".onnx" or head[:1] == b"\x08"


@dataclass(frozen=True)
class FormatEntry:
    """A format: the module holding its Handler, and a cheap test on the file."""

    format: Format
    module: str
    sniff: Callable[[Path, bytes], bool] | None = None  # None: reached by URL, not a file


# Tried in order: TorchScript archives are zip files too, so they come before checkpoints.
FORMATS: tuple[FormatEntry, ...] = (
    FormatEntry(Format.TORCHSCRIPT, "toolkit.artifacts.torchscript", _is_torchscript),
    FormatEntry(Format.CHECKPOINT, "toolkit.artifacts.checkpoint", _is_checkpoint),
    FormatEntry(Format.ONNX, "toolkit.artifacts.onnx", _is_onnx),
    FormatEntry(Format.SERVED, "toolkit.triton.runner"),
)
URL_SCHEMES = {"grpc://": Format.SERVED, "http://": Format.SERVED}


def is_url(path: str | os.PathLike) -> bool:
    return str(path).startswith(tuple(URL_SCHEMES))


def detect_format(path: str | os.PathLike) -> Format:
    """The format of a file from its content (not only its name), or of a served model URL."""
    text = str(path)
    for scheme, fmt in URL_SCHEMES.items():
        if text.startswith(scheme):
            return fmt
    path = Path(path)
    if not path.is_file():
        raise DlkitError(f"model file not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as exc:
        raise DlkitError(f"cannot read {path}: {exc.strerror}") from exc
    for entry in FORMATS:
        if entry.sniff is not None and entry.sniff(path, head):
            return entry.format
    raise DlkitError(
        f"{path} is not a model file dlkit understands (a dlkit checkpoint, TorchScript or ONNX)"
    )


def handler(fmt: Format) -> Handler:
    """The Handler of a format (imports its module on first use)."""
    entry = next(e for e in FORMATS if e.format == fmt)
    return importlib.import_module(entry.module).Handler()


def read_info(path: str | os.PathLike) -> ArtifactInfo:
    """The metadata embedded in any artifact dlkit wrote (nothing in it is run)."""
    return handler(detect_format(path)).read_info(path)


def open_runner(
    path: str | os.PathLike, device: str = "cpu", trust: bool = False, **options: Any
) -> Runner:
    """Open any model dlkit wrote (checkpoint, TorchScript, ONNX) or serves
    (`grpc://host:8001/NAME`, `http://...`) as a Runner.

    `trust` lets formats whose files are programs (TorchScript) run code outside dlkit's
    allowlist. `options` go to the backend: `threads` (all), `autocast`/`channels_last`
    (checkpoints), `optimization`/`tensorrt` (ONNX), client options (served models).
    """
    fmt = detect_format(path)
    chosen = handler(fmt)
    if getattr(chosen, "runs_code", False):
        options["trust"] = trust
    try:
        return chosen.open_runner(path, device=device, **options)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise DlkitError(f"{fmt} runners do not take that option: {exc}") from exc
