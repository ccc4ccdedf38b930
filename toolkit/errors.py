"""The one error type for mistakes a user can make and fix."""

from __future__ import annotations


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
