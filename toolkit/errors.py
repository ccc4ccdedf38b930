"""The one error type for mistakes a user can make and fix."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class DlkitError(Exception):
    """Bad input, a missing file, an unusable device: a message that says what to do.

    The CLI prints it without a traceback and exits with status 1.
    """


_WORKER_MARKER = "Original Traceback (most recent call last):"


def user_message(exc: BaseException) -> str:
    """The message to show for `exc`, unwrapping errors re-raised from DataLoader workers.

    A DlkitError raised inside a worker process comes back with the worker's traceback folded
    into its message; the user only needs its last line.
    """
    text = str(exc)
    if _WORKER_MARKER in text:
        text = text.strip().splitlines()[-1]
        for name in (f"{DlkitError.__module__}.{DlkitError.__name__}", DlkitError.__name__):
            text = text.removeprefix(f"{name}: ")
    return text


_TEMPORARY = re.compile(r"^\.(.+)\.tmp-\d+$")  # `toolkit.files.atomic_path`'s names
_FIX = {
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free space or write elsewhere",
    errno.EROFS: "that file system is read-only; write elsewhere",
    errno.EACCES: "permission denied; write elsewhere or change the permissions",
    errno.ENAMETOOLONG: "a name in that path is too long (255 bytes at most); choose a shorter one",
}


def os_error_message(exc: OSError, writing: str | os.PathLike | None = None) -> str:
    """One line for an operating-system error (a full disk, a read-only folder): the file
    being written (`writing`, else the error's own, never a temporary name), the reason, and
    what to do. Whatever was being written went to a temporary name that is gone: nothing
    half-written is left where the file belongs."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    target = writing if writing is not None else exc.filename
    where = ""
    if target is not None:
        parts = Path(os.fsdecode(target)).parts
        path = Path(*(m.group(1) if (m := _TEMPORARY.match(part)) else part for part in parts))
        where = f"cannot write {path}: " if writing is not None else f"{path}: "
    fix = _FIX.get(exc.errno)
    return f"{where}{reason}" + (f" ({fix})" if fix else "")
