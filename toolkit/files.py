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

from toolkit.errors import DlkitError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    If the body raises, the temporary file or folder is removed and `path` is untouched.
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
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """`target` as a hard link to `source` where the file system allows (a copy elsewhere),
    replacing what was there atomically."""
    tmp = Path(target).with_name(f".{Path(target).name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def link_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a folder as hard links where the file system allows (copies elsewhere)."""
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


def process_running(pid: int) -> bool:
    """Whether process `pid` exists (another user's, or a number that is no pid, counts as
    running: leave its files alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
