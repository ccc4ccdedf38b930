"""Starting and stopping a real `tritonserver` on a model repository.

The binary is the one on PATH (the NGC image, every backend) or else the one bundled with the
`nvidia-pytriton` wheel (`pip install 'dlkit[serve]'`), which has only the python backend. The
bundled one needs three things from us (see DESIGN.md): its python backend next to a stub built
for the running Python, that interpreter's `libpython` and the wheel's libraries on
LD_LIBRARY_PATH, and a `python3` first on PATH through which the stub finds its packages
(numpy < 2, onnxruntime, torch, dlkit). That `python3` is a private virtual environment over
this one's packages that turns bytecode writing off: the stubs import model.py from the
version folders and, running isolated from the environment, ignore PYTHONDONTWRITEBYTECODE,
so they would leave `__pycache__/` in the model repository.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import DlkitError
from toolkit.files import open_log
from toolkit.triton import lifetime
from toolkit.triton.client import TritonClient
from toolkit.triton.plan import plan_repository


@dataclass(frozen=True)
class ServerBinary:
    """A tritonserver executable and where its backends live."""

    path: Path
    backends_dir: Path
    bundled: bool  # the nvidia-pytriton copy, which needs the set-up in `prepare`

    def backends(self) -> set[str]:
        """Names of the backends this server can load (ensembles are built in)."""
        found = {p.name for p in self.backends_dir.iterdir() if p.is_dir()}
        return found | {"ensemble"}


def find_tritonserver() -> ServerBinary:
    """`tritonserver` from PATH, else the one in the nvidia-pytriton wheel."""
    on_path = shutil.which("tritonserver")
    if on_path:
        path = Path(on_path).resolve()
        return ServerBinary(path, path.parent.parent / "backends", bundled=False)
    try:
        import pytriton
    except ImportError:
        raise DlkitError(
            "tritonserver not found: install the server with `pip install 'dlkit[serve]'` "
            "(nvidia-pytriton, Linux x86-64) or run in the NGC image (see the Dockerfile)"
        ) from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    return ServerBinary(root / "bin" / "tritonserver", root / "backends", bundled=True)


def unservable_here(repo: str | os.PathLike, models: list[str]) -> dict[str, str]:
    """Which of `models` in `repo` the tritonserver installed here could not serve, and why;
    empty when it can serve them all or when no server is installed."""
    try:
        binary = find_tritonserver()
    except DlkitError:
        return {}
    plan = plan_repository(repo, binary.backends(), models)
    return {name: why for name, why in plan.skipped.items() if name in models}


def check_port_free(host: str, port: int, option: str) -> None:
    """Fail early with the option to change, rather than deep inside the server log."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # As servers do: connections of a stopped server lingering in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DlkitError(
                    f"port {port} on {host} is in use (another server?); choose another with "
                    f"{option}"
                ) from None
            raise DlkitError(f"cannot bind {host}:{port}: {exc.strerror}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _python_backend(workdir: Path, binary: ServerBinary) -> Path:
    """A private copy of the bundled python backend with the stub for this Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = (
        binary.path.parent.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
    )
    if not stub.is_file():
        raise DlkitError(
            f"nvidia-pytriton has no python backend stub for Python {version}; use Python "
            "3.8-3.13 or the NGC image"
        )
    target = workdir / "backends" / "python"
    shutil.copytree(binary.backends_dir / "python", target, ignore=shutil.ignore_patterns("__*"))
    shutil.copy2(stub, target / "triton_python_backend_stub")
    return target.parent


def _stub_python(workdir: Path) -> Path:
    """A virtual environment for the python stubs: this interpreter, this environment's
    packages (and their .pth files), and bytecode writing off. Returns its `bin` folder."""
    home = workdir / "python"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "python3").symlink_to(sys.executable)
    base = Path(getattr(sys, "_base_executable", sys.executable)).parent
    (home / "pyvenv.cfg").write_text(f"home = {base}\ninclude-system-site-packages = false\n")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    packages = home / "lib" / version / "site-packages"
    packages.mkdir(parents=True)
    folders = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    lines = ["import sys; sys.dont_write_bytecode = True"]
    lines += [f"import site; site.addsitedir({folder!r})" for folder in folders]
    (packages / "dlkit_stub.pth").write_text("\n".join(lines) + "\n")
    return home / "bin"


def server_environment(binary: ServerBinary, python_bin: Path | None = None) -> dict[str, str]:
    """The environment the server and its python stubs need (see the module docstring);
    `python_bin` is the folder whose `python3` the stubs use (default: this one's)."""
    env = dict(os.environ)
    if binary.bundled:
        python_bin = python_bin or Path(sys.executable).parent
        env["PATH"] = os.pathsep.join([str(python_bin), env.get("PATH", "")])
        # The copied stub's relative RPATH no longer finds the wheel's own libraries.
        wheel_libs = binary.path.parents[3] / "nvidia_pytriton.libs"
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            str(p) for p in (libdir, wheel_libs, env.get("LD_LIBRARY_PATH")) if p
        )
    return env


DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
DEFAULT_EXIT_TIMEOUT = 10  # seconds a stopping server gives in-flight requests (Triton: 30)
_LOADED = {"READY", "LOADING", "UNLOADING"}  # repository-index states of a model still held


def server_arguments(
    repository: str | os.PathLike,
    models: list[str],
    host: str | None = None,
    ports: dict[str, int] = DEFAULT_PORTS,
    strict: bool = False,
    exit_timeout: int | None = None,
) -> list[str]:
    """tritonserver's arguments (after the binary) to serve `models` of `repository` by name.

    Explicit model control, so exactly `models` are loaded. Not `strict` (`dlkit serve`): a
    model that fails to load is reported, not fatal to the others, and the server is ready
    without it. `strict` (a Kubernetes pod): such a model stops the server, and ready means
    every model is. `host=None` keeps Triton's default address (every interface).
    `exit_timeout` bounds how long a stopping server drains (None: Triton's 30 s).
    """
    flag = str(strict).lower()
    args = [
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        f"--exit-on-error={flag}",
        f"--strict-readiness={flag}",
    ]
    if host is not None:
        args += [f"--{kind}-address={host}" for kind in ("http", "grpc", "metrics")]
    args += [f"--{kind}-port={port}" for kind, port in ports.items()]
    if exit_timeout is not None:
        args.append(f"--exit-timeout-secs={exit_timeout}")
    return args + [f"--load-model={name}" for name in models]


class TritonServer:
    """One `tritonserver` process on a repository, bound to `host`.

    Loads the servable models of `repo` (all, or `models`) in explicit model-control mode and
    records the others in `plan.skipped`. The server log goes to `log_file` (default: a file in
    a private temporary folder), or to this process's stderr with `stream_log=True`. On stop,
    in-flight requests get `exit_timeout` seconds. The server dies with this process (see
    `toolkit.triton.lifetime`). Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(
        self,
        repo: str | os.PathLike = "model_repository",
        host: str = "127.0.0.1",
        http_port: int = DEFAULT_PORTS["http"],
        grpc_port: int = DEFAULT_PORTS["grpc"],
        metrics_port: int = DEFAULT_PORTS["metrics"],
        models: list[str] | None = None,
        log_file: str | os.PathLike | None = None,
        stream_log: bool = False,
        binary: ServerBinary | None = None,
        exit_timeout: int = DEFAULT_EXIT_TIMEOUT,
    ):
        self.repo = Path(repo).resolve()
        self.host = host
        ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        # Port 0 means "any free port": pick one now, so the one printed is the one used.
        self.ports = {kind: port or free_port(host) for kind, port in ports.items()}
        self.binary = binary or find_tritonserver()
        self.plan = plan_repository(self.repo, self.binary.backends(), models)
        self.log_file = Path(log_file) if log_file else None
        self.stream_log = stream_log
        self.exit_timeout = exit_timeout
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self._address()}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self._address()}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._address()}:{self.ports['metrics']}/metrics"

    def _address(self) -> str:
        # A server bound to every interface is reached locally through the loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host and not host.startswith("[") else host

    def command(self, backends_dir: Path) -> list[str]:
        # The drain is `stop`'s: it unloads the models first, so by the time the server gets
        # SIGTERM nothing is left to wait for (see `_drain`).
        return [
            str(self.binary.path),
            f"--backend-directory={backends_dir}",
            *server_arguments(self.repo, self.plan.load, self.host, self.ports, exit_timeout=0),
        ]

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Start the server and wait until its models are loaded (those still loading after
        `timeout` seconds count as failed, see `failed_models`); raises DlkitError with the
        end of the server log if no model comes up. Servers left behind by a dlkit process
        that was killed are stopped first (they may hold the ports)."""
        if not self.plan.load:
            raise DlkitError(f"nothing to serve in {self.repo}: " + self._skipped_text())
        lifetime.reap_orphans()
        for kind, port in self.ports.items():
            check_port_free(self.host, port, f"--{kind}-port")
        self.workdir = Path(tempfile.mkdtemp(prefix=lifetime.WORKDIR_PREFIX))
        lifetime.write_owner(self.workdir)
        backends_dir, python_bin = self.binary.backends_dir, None
        if self.binary.bundled:
            backends_dir = _python_backend(self.workdir, self.binary)
            python_bin = _stub_python(self.workdir)
        log_path = self.log_file or self.workdir / "tritonserver.log"
        try:
            output = None if self.stream_log else open_log(log_path, "tritonserver starting")
        except DlkitError:
            self.stop()
            raise
        try:
            self.process = subprocess.Popen(
                self.command(backends_dir),
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno() if self.stream_log else output,
                stderr=subprocess.STDOUT,
                env=server_environment(self.binary, python_bin),
                # Its own process group: python stubs are stopped with it, and a Ctrl-C reaches
                # only us, so the shutdown happens once, in `stop`.
                start_new_session=True,
                preexec_fn=lifetime.preexec(),
            )
            serving = {"repository": str(self.repo), "http": self.http_url}
            lifetime.write_owner(self.workdir, self.process.pid, serving)
        finally:
            if output is not None:
                output.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the server answers and none of its models is still loading, or until
        `timeout` has passed with at least one model ready."""
        deadline = time.monotonic() + timeout
        states: dict[str, dict] = {}
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise DlkitError(
                    f"tritonserver exited with status {self.process.returncode} while "
                    f"starting.{self._log_tail()}"
                )
            with contextlib.suppress(DlkitError):
                states = self.model_states()
            found = {s["state"] for s in states.values()}
            if states and found <= {"READY", "UNAVAILABLE"}:
                return
            if time.monotonic() > deadline:
                if "READY" in found:
                    return
                raise DlkitError(
                    f"tritonserver did not become ready within {timeout:.0f} s.{self._log_tail()}"
                )
            time.sleep(0.25)

    def model_states(self) -> dict[str, dict]:
        """`{name: {"state", "reason", "version"}}` of the models it was asked to load.

        Raises DlkitError while the server does not answer.
        """
        with TritonClient(f"http://{self.http_url}", timeout=5, retries=0) as client:
            index = client.repository_index()
        states = {
            name: {"state": "LOADING", "reason": "", "version": ""} for name in self.plan.load
        }
        for entry in index:
            if entry["name"] in states and entry.get("state"):
                states[entry["name"]] = {
                    k: entry.get(k, "") for k in ("state", "reason", "version")
                }
        return states

    def served_versions(self) -> dict[str, list[int]]:
        """The versions of each model it was asked to load that are ready now."""
        with TritonClient(f"http://{self.http_url}", timeout=5, retries=0) as client:
            index = client.repository_index()
        ready: dict[str, list[int]] = {}
        for entry in index:
            if entry.get("state") == "READY" and str(entry.get("version", "")).isdigit():
                ready.setdefault(entry["name"], []).append(int(entry["version"]))
        return {name: sorted(ready[name]) for name in self.plan.load if name in ready}

    def failed_models(self) -> dict[str, str]:
        """Models that were asked for but did not load, with Triton's reason."""
        still = "still loading when the wait for the models ended (see the server log)"
        return {
            name: s["reason"] or (still if s["state"] == "LOADING" else "failed to load")
            for name, s in self.model_states().items()
            if s["state"] != "READY"
        }

    def _skipped_text(self) -> str:
        return "; ".join(f"{n}: {why}" for n, why in self.plan.skipped.items()) or "empty"

    def _log_tail(self, lines: int = 25) -> str:
        path = self.log_file or (self.workdir / "tritonserver.log" if self.workdir else None)
        if self.stream_log or path is None or not path.is_file():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return "\nLast lines of the server log:\n" + "\n".join(tail)

    def log_text(self) -> str:
        """The whole server log so far (empty when it is streamed)."""
        path = self.log_file or (self.workdir / "tritonserver.log" if self.workdir else None)
        return path.read_text(errors="replace") if path and path.is_file() else ""

    def wait(self) -> int:
        """Block until the server exits; its exit status."""
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout: float | None = None) -> int | None:
        """Drain (unload every model, giving requests in flight up to `exit_timeout` seconds,
        or `timeout` if less), then SIGTERM the server, and SIGKILL what is left of it after
        `timeout` more (default: 20 s); idempotent. Returns the server's exit status."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                self._drain(
                    self.exit_timeout if timeout is None else min(timeout, self.exit_timeout)
                )
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)  # the server alone: it stops its stubs
            try:
                code = process.wait(20 if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                code = None
            # Whatever is left of the group (python stubs), and the server if it hung.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            if code is None:
                code = process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return code

    def _drain(self, seconds: float) -> None:
        """Unload every loaded model (those loaded later through the repository API too) and
        wait, up to `seconds`, until none is left: Triton refuses new requests to a model
        that is unloading and finishes those in flight. A tritonserver that gets SIGTERM with
        python-backend models still loaded exits through a path that crashed it (SIGSEGV) 1
        time in 3 under load; with none loaded it stops cleanly. A server that does not
        answer is left to the signal."""
        deadline = time.monotonic() + seconds
        url, each = f"http://{self.http_url}", max(0.5, min(5.0, seconds))  # per call
        with contextlib.suppress(DlkitError), TritonClient(url, timeout=each, retries=0) as client:
            loaded = [m["name"] for m in client.repository_index() if m.get("state") in _LOADED]
            for name in loaded:
                client.unload_model(name)
            while loaded and time.monotonic() < deadline:
                index = client.repository_index()
                if not any(m.get("state") in _LOADED for m in index):
                    return
                time.sleep(0.1)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Stop(Exception):
    """SIGTERM, turned into an exception in the main thread."""


def serve_until_signal(server: TritonServer) -> int | None:
    """Block while `server` runs: None once Ctrl-C or SIGTERM asks to stop (the caller then
    stops it), or the server's exit status if it ended by itself."""

    def on_sigterm(signum, frame):
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return server.wait()
    except (KeyboardInterrupt, _Stop):
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)
