"""Writing files so that a crash never leaves a half-written one where a good one was."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from toolkit import processes
from toolkit.errors import DlkitError, os_error_message


def writable_folder(folder: str | os.PathLike) -> None:
    """Create `folder` (and its parents) if needed; a DlkitError if that fails or it cannot
    be written to."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DlkitError(f"cannot create folder {folder}: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK):
        raise DlkitError(f"folder {folder} is not writable; choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    If the body raises, the temporary file or folder is removed and `path` is untouched; an
    OSError (a full disk, say) becomes a DlkitError naming `path`.
    """
    path = Path(path)
    writable_folder(path.parent)
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


MAX_NAME_BYTES = 240  # 255 on most file systems, less room for atomic_path's `.NAME.tmp-PID`


def output_path(path: str | os.PathLike, option: str) -> Path:
    """`path`, checked as a place to write before anything runs: UTF-8 text (a name of other
    bytes cannot go into reports and configs), each name short enough for the file system
    with a temporary name beside it, and not a symbolic link (written through, it would
    land elsewhere)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DlkitError(
            f"{option} {os.fsencode(text)!r} is not UTF-8 text; use a name that is"
        ) from None
    for part in Path(text).parts:
        if len(part.encode()) > MAX_NAME_BYTES:
            raise DlkitError(
                f"{option}: the name {part[:20]}... is {len(part.encode())} bytes; file systems "
                f"take 255 at most, and dlkit needs room for a temporary name: {MAX_NAME_BYTES}"
            )
    if Path(text).is_symlink():
        raise DlkitError(f"{option} {text} is a symbolic link; give the file or folder itself")
    return Path(text)


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
    with private_folder("dlkit-stage-") as tmp:
        staging = tmp / "copy"
        if Path(folder).exists():
            link_tree(folder, staging)
        return change(staging)


def open_log(path: str | os.PathLike, first_line: str) -> BinaryIO:
    """`path` opened to append, `first_line` (with the time) written through to the disk: a
    log that cannot be written (a full disk, /dev/full, a folder) fails now with a DlkitError,
    not silently later. The caller closes it."""
    try:
        log = open(path, "ab")  # noqa: SIM115 (returned open)
    except OSError as exc:
        raise DlkitError(os_error_message(exc, writing=path)) from None
    try:
        log.write(f"{first_line}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        os.fsync(log.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):  # closing flushes again, and fails again
            log.close()
        raise DlkitError(os_error_message(exc, writing=path)) from None
    return log


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove what `atomic_path` left in `folder` (`.NAME.tmp-PID`) when its process was killed
    (SIGKILL, a power cut); those of processes still running are left alone. Returns what
    was removed."""
    removed = []
    for leftover in Path(folder).glob(".*.tmp-*"):
        pid = leftover.name.rpartition(".tmp-")[2]
        if pid.isdecimal() and not processes.running(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


@contextlib.contextmanager
def private_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder `<tmp>/<prefix><pid>.<start>-XXXX` for this process, removed when
    the block ends. Folders of the same prefix whose process is gone (a run killed with
    SIGKILL never cleans up) are removed first, when this machine can tell (Linux)."""
    root = Path(tempfile.gettempdir())
    if processes.can_tell():
        for old in root.glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                mine = old.is_dir() and old.stat().st_uid == os.getuid()
                if mine and not processes.tag_alive(old.name[len(prefix) :].partition("-")[0]):
                    shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{processes.tag()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
