"""Writing files so that a crash never leaves a half-written one where a good one was."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import DlkitError, os_error_message


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    If the body raises, the temporary file or folder is removed and `path` is untouched; an
    OSError (a full disk, say) becomes a DlkitError naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DlkitError(f"cannot create folder {path.parent}: {exc.strerror}") from exc
    if not os.access(path.parent, os.W_OK):
        raise DlkitError(f"folder {path.parent} is not writable; choose another output path")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a read-only folder: named, and the temporary is gone
        raise DlkitError(os_error_message(exc, writing=path)) from exc
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    write_bytes(path, text.encode())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically (enums and paths as their text)."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def link_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a folder as hard links where the file system allows (copies elsewhere)."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)


def rehearse(folder: str | os.PathLike, change: Callable[[Path], Any]) -> Any:
    """Run `change(copy)` on a linked copy of `folder` (empty if it does not exist), so a
    failure shows before the real one is touched; returns what `change` returned. `change`
    must replace files (write elsewhere and rename), never edit a linked one in place."""
    with tempfile.TemporaryDirectory(prefix="dlkit-stage-") as tmp:
        staging = Path(tmp) / "copy"
        if Path(folder).exists():
            link_tree(folder, staging)
        return change(staging)
