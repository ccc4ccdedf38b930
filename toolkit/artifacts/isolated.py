"""Model files dlkit did not write run in a child process, every step under one deadline.

A TorchScript file is a program (`torch.jit.load` runs its `__setstate__`, each call its
`forward`) and an ONNX file is a graph whose loops, sizes and nesting its author chooses: either
can keep a process busy forever, and a thread cannot be stopped. A process can. So
`IsolatedRunner` opens the file in a child process and sends it each batch; loading and every
call must answer within `timeout` seconds, or the child is killed and the call raises
DlkitError. `run_isolated` does the same for one function call (quantizing a file, say).

The limit is `--model-timeout` on every command that runs such a file, or the environment
variable DLKIT_MODEL_TIMEOUT, else `DEFAULT_TIMEOUT`. Children are forked from a server process
that has torch and ONNX Runtime imported (multiprocessing's forkserver): the first child of a
process waits for that server to start (seconds), later ones start in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from toolkit.artifacts.registry import detect_format, is_url, open_runner
from toolkit.artifacts.runner import Runner, first_line
from toolkit.choices import Format
from toolkit.errors import DlkitError

DEFAULT_TIMEOUT = 120.0  # seconds for one step: a classifier loads and answers in far less
TIMEOUT_ENV = "DLKIT_MODEL_TIMEOUT"
MAX_TIMEOUT = 86_400.0
_PRELOAD = ["numpy", "torch", "onnxruntime", "toolkit.artifacts.isolated"]
_context: Any = None
_scoped: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "model_timeout", default=None
)


def model_timeout(seconds: float | None = None) -> float:
    """The deadline for one step of running a model file: `seconds`, else the one a command
    set (`timeout_scope`), else $DLKIT_MODEL_TIMEOUT, else DEFAULT_TIMEOUT."""
    if seconds is None:
        seconds = _scoped.get()
    if seconds is None:
        text = os.environ.get(TIMEOUT_ENV)
        try:
            seconds = DEFAULT_TIMEOUT if text is None else float(text)
        except ValueError:
            raise DlkitError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT):
        raise DlkitError(f"the model timeout must be between 0 and {MAX_TIMEOUT:g} s")
    return float(seconds)


@contextlib.contextmanager
def timeout_scope(seconds: float | None) -> Iterator[None]:
    """Within the block, `model_timeout()` is `seconds` (None: unchanged); `--model-timeout`
    sets it for the command that takes it."""
    token = _scoped.set(model_timeout(seconds) if seconds is not None else _scoped.get())
    try:
        yield
    finally:
        _scoped.reset(token)


def _ctx():
    """multiprocessing's forkserver, its server preloaded with torch and ONNX Runtime (forking
    this process instead could copy held locks and thread pools)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    return _context


class _Child:
    """A child process running `target(conn, *args)` and the pipe to it."""

    def __init__(self, target: Callable[..., None], args: tuple, what: str, timeout: float):
        self.what, self.timeout = what, timeout
        # The child's temporary files go here, removed with it even when it is killed.
        scratch = tempfile.mkdtemp(prefix="dlkit-child-")
        self.conn, theirs = _ctx().Pipe()
        self.process = _ctx().Process(
            target=_child_main, args=(target, theirs, scratch, *args), daemon=True
        )
        # Runs on close(), when this object is collected, or at exit, whichever comes first.
        self.close = weakref.finalize(self, _release, self.process, self.conn, scratch)
        try:
            self.process.start()
        finally:
            theirs.close()

    def ask(self, message: Any, doing: str) -> Any:
        """Send `message` (unless None), wait for the answer; DlkitError after the deadline,
        when the child fails, or when it dies."""
        if message is not None:
            self.conn.send(message)
        if not self.conn.poll(self.timeout):
            self.close()
            raise DlkitError(
                f"{self.what}: {doing} did not finish within {self.timeout:g} s, so it was "
                "stopped (a model file that never returns would hang this for ever). Raise "
                f"the limit with --model-timeout (or {TIMEOUT_ENV}) if it is only slow."
            )
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            code = self.process.exitcode
            self.close()
            raise DlkitError(
                f"{self.what}: the process running it ended during {doing} (exit status "
                f"{code}: it crashed, or ran out of memory)"
            ) from None
        if kind == "error":
            raise DlkitError(payload)
        if kind == "oserror":
            raise OSError(*payload)
        return payload


def _release(process, conn, scratch: str) -> None:
    """Stop a child (if it still runs), close its pipe, remove its temporary files."""
    if process.pid is not None and process.is_alive():
        process.kill()
        process.join(5)
    conn.close()
    shutil.rmtree(scratch, ignore_errors=True)


def _child_main(target: Callable[..., None], conn, scratch: str, *args: Any) -> None:
    _die_with_parent()
    os.environ["TMPDIR"] = tempfile.tempdir = scratch
    target(conn, *args)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this child when its parent (the fork server, which
    lives as long as dlkit) goes."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def _error(exc: BaseException) -> tuple[str, Any]:
    if isinstance(exc, DlkitError):
        return "error", str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:  # a full disk, say: the parent
        return "oserror", (exc.errno, exc.strerror)  # names the file it was writing
    return "error", f"{type(exc).__name__}: {first_line(exc)}"


def _serve(conn, path: str, device: str, options: dict[str, Any]) -> None:
    """The child: open the runner, then answer requests until the parent closes the pipe."""
    baseline = _status_bytes("VmRSS")
    try:
        runner = open_runner(path, device=device, **options)
        conn.send(("ok", runner.info))
    except BaseException as exc:
        conn.send(_error(exc))
        return
    kept = None
    while True:
        try:
            request, payload = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if request == "run":
                answer = runner(payload)
            elif request == "keep":
                kept, answer = payload, None
            elif request == "time":
                answer = _timed(runner, kept, payload)
            else:
                answer = _peak_bytes(device, baseline)
            conn.send(("ok", answer))
        except BaseException as exc:
            conn.send(_error(exc))


def _timed(runner: Runner, batch: np.ndarray, synchronize: bool) -> float:
    sync = _cuda_synchronize if synchronize else (lambda: None)
    sync()
    start = time.perf_counter()
    runner(batch)
    sync()
    return time.perf_counter() - start


def _cuda_synchronize() -> None:
    import torch

    torch.cuda.synchronize()


def _peak_bytes(device: str, baseline: int | None) -> int | None:
    """The most memory the model has held in this child: on the GPU, or resident on the host
    beyond what the child held before loading it."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    peak = _status_bytes("VmHWM")
    return None if peak is None or baseline is None else max(peak - baseline, 0)


def _status_bytes(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return None


class IsolatedRunner(Runner):
    """A model file opened and run in a child process (see the module docstring); the same
    call as any runner. `options` go to `open_runner` in the child (trust, threads, ...)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", timeout: float | None = None,
                 **options: Any):  # fmt: skip
        self.path, self.timeout = str(path), model_timeout(timeout)
        self._child = _Child(_serve, (self.path, device, options), self.path, self.timeout)
        try:
            self.info = self._child.ask(None, "loading")
        except BaseException:
            self._child.close()
            raise
        self.name = self.path

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._child.ask(("run", batch), f"a batch of {len(batch)}")

    def timed_step(self, batch: np.ndarray, synchronize: bool = False) -> Callable[[], float]:
        """A benchmark step: one call on `batch` (kept in the child), timed there, so that
        passing the batch between processes is not counted."""
        self.check_input(batch)
        self._child.ask(("keep", np.ascontiguousarray(batch, dtype=np.float32)), "taking a batch")
        return lambda: self._child.ask(("time", synchronize), f"a batch of {len(batch)}")

    def peak_bytes(self) -> int | None:
        return self._child.ask(("peak", None), "reporting its memory")

    def close(self) -> None:
        self._child.close()


def _call(conn, fn: Callable[..., Any], args: tuple) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:
        conn.send(_error(exc))


def run_isolated(fn: Callable[..., Any], *args: Any, what: str, doing: str,
                 timeout: float | None = None) -> Any:  # fmt: skip
    """`fn(*args)` in a child process, its result (picklable) back; DlkitError when it does
    not finish within the model timeout (the child is then killed) or fails."""
    child = _Child(_call, (fn, args), what, model_timeout(timeout))
    try:
        return child.ask(None, doing)
    finally:
        child.close()


def open_model(
    path: str | os.PathLike, device: str = "cpu", trust: bool = False,
    timeout: float | None = None, **options: Any,
) -> Runner:  # fmt: skip
    """`open_runner` for a model from outside: files run in a child process under the model
    timeout (`IsolatedRunner`); checkpoints (dlkit's own model code, weights read with
    weights_only) and served models (URLs) run here as before."""
    if is_url(path) or detect_format(path) == Format.CHECKPOINT:
        return open_runner(path, device=device, trust=trust, **options)
    if detect_format(path) == Format.TORCHSCRIPT:
        options["trust"] = trust
    return IsolatedRunner(path, device, timeout, **options)
