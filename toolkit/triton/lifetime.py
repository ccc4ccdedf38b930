"""A tritonserver's life tied to the dlkit process that started it.

Two layers, because `kill -9` gives dlkit no chance to clean up: on Linux the server is started
with a parent-death signal (SIGTERM when dlkit dies, however it dies), and every server's
private folder holds an `owner.json` naming dlkit's and the server's processes. The next
`TritonServer.start` stops the servers whose owner is gone (they still hold the ports) and
removes their folders (`reap_orphans`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from toolkit.log import logger
from toolkit.processes import alive, can_tell, start_time

WORKDIR_PREFIX = "dlkit-triton-"
OWNER_FILE = "owner.json"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies. Used only
    when the main thread starts the server: the signal follows the thread that forked."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def preexec() -> Callable[[], None] | None:
    """The `preexec_fn` for the server's Popen: `die_with_parent` where it works, else None."""
    main = threading.current_thread() is threading.main_thread()
    return die_with_parent if sys.platform.startswith("linux") and main else None


def write_owner(workdir: Path, server_pid: int | None = None, serving: dict | None = None) -> None:
    """Record who owns `workdir`: this process and, once started, its server, with what it
    serves (`serving`: the repository and the HTTP address, for `running_servers`)."""
    me = os.getpid()
    record: dict = {"dlkit": [me, start_time(me)]}
    if server_pid is not None:
        record["server"] = [server_pid, start_time(server_pid)]
    if serving is not None:
        record["serving"] = serving
    (workdir / OWNER_FILE).write_text(json.dumps(record))


def running_servers(repo: str | os.PathLike, root: str | os.PathLike | None = None) -> list[dict]:
    """The tritonservers dlkit started on `repo` that are running now: their records
    (`{"repository", "http", "pid"}`), read from the owner files of their private folders."""
    wanted = str(Path(repo).resolve())
    found = []
    for owner in Path(root or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*/{OWNER_FILE}"):
        try:
            record = json.loads(owner.read_text())
            serving, server = record.get("serving") or {}, record.get("server") or [None, None]
            if serving.get("repository") == wanted and alive(*server):
                found.append(serving | {"pid": server[0]})
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return found


def stop_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group led by `pid`, give the leader `timeout` seconds to exit, then
    SIGKILL whatever is left of the group (python stubs, or the leader if it hung)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while start_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)


def reap_orphans(root: str | os.PathLike | None = None, timeout: float = 15.0) -> list[str]:
    """Stop the servers of dlkit processes that died without stopping them (kill -9) and
    remove their private folders; returns the folders removed. Folders of live dlkit
    processes, of other users, or without an owner record are left alone."""
    removed: list[str] = []
    if not can_tell():  # no way to tell a live owner from a dead one
        return removed
    for workdir in Path(root or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            if workdir.stat().st_uid != os.getuid():
                continue
            record = json.loads((workdir / OWNER_FILE).read_text())
            owner, server = record["dlkit"], record.get("server") or [None, None]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive(*owner):
            continue
        if alive(*server):
            logger.warning("stopping tritonserver %s, left running by a dlkit that died", server[0])
            stop_group(server[0], timeout)
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(str(workdir))
    return removed
