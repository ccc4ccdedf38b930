"""Which processes are still there: how dlkit tells the leftovers of a killed run (temporary
files and folders, a server) from those of a run still going."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path


def start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None if there is no
    such process, or only its zombie. With the pid, it names one process: pids are reused,
    start times are not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else fields[19]  # state (field 3) and start (field 22)


def alive(pid: int | None, started: str | None) -> bool:
    """Is the process that `pid` and `started` (from `start_time`) named still running?"""
    return bool(pid) and started is not None and start_time(pid) == started


def can_tell() -> bool:
    """Can this machine tell a live process from a dead one (Linux's /proc)? Where it cannot,
    nothing that might belong to a live process is removed."""
    return Path("/proc/self/stat").is_file()


def running(pid: int) -> bool:
    """Is there a process `pid` (another user's counts; so does a reused pid)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's, or not a pid: leave what it names alone
    return True


def tag() -> str:
    """This process as text for a file name: `<pid>.<start time>`."""
    pid = os.getpid()
    return f"{pid}.{start_time(pid) or 0}"


def tag_alive(text: str) -> bool:
    """Is the process a `tag()` names still running? A name that is no tag counts as alive."""
    pid, _, started = text.partition(".")
    if not (pid.isdecimal() and started.isdecimal()):
        return True
    return alive(int(pid), started)


_held = threading.local()  # how deep in `interrupts_held` the main thread is, and what waits


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, so a run that is asked to stop
    cleans up as Ctrl-C does; within `interrupts_held`, both wait for the block to end
    (elsewhere than in the main thread, signals are left alone)."""

    def interrupt(signum, frame):
        if getattr(_held, "depth", 0):
            _held.pending = True
            return
        raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C or SIGTERM (under `sigterm_interrupts`) during the block takes effect when it
    ends: files written together (an epoch's checkpoints) are all written, or none."""
    _held.depth = getattr(_held, "depth", 0) + 1
    try:
        yield
    finally:
        _held.depth -= 1
        if not _held.depth and getattr(_held, "pending", False):
            _held.pending = False
            raise KeyboardInterrupt
