"""`dlkit serve` and TritonServer on a real pip-installed tritonserver: what is skipped and why,
ports, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.triton.client import TritonClient
from toolkit.triton.configs import ServingOptions, write_config
from toolkit.triton.repository import PackageOptions, package_artifact

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the pip-installed tritonserver is Linux-only"
)
PYTHON = PackageOptions(backend="python", serving=ServingOptions(max_queue_delay_us=500))


# ------------------------------------------------------------------------------ the plan


def _model(repo: Path, name: str, versions=(1,), files=("model.py",), **fields) -> Path:
    """A python-backend model folder written by hand (what a user might leave there)."""
    folder = repo / name
    for version in versions:
        (folder / str(version)).mkdir(parents=True)
        for file in files:
            (folder / str(version) / file).write_text("")
    write_config(mc.ModelConfig(name=name, backend="python", **fields), folder / "config.pbtxt")
    return folder


def test_serve_refuses_a_port_in_use(dlkit, tmp_path):
    repo = tmp_path / "repo"
    _model(repo, "m")
    with socket_on_port() as port:
        result = dlkit("serve", "--repo", repo, "--http-port", port, expect=1)
    assert f"Error: port {port} on 127.0.0.1 is in use" in result.output
    assert "--http-port" in result.output
    result = dlkit("serve", "--repo", tmp_path / "none", expect=1)
    assert "no model repository at" in result.output


class socket_on_port:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


# ------------------------------------------------------------------------ the session server


@pytest.mark.slow
def test_server_skips_what_its_backends_cannot_serve(served):
    assert served.server.plan.load == ["tiny", "tiny_ensemble", "tiny_preprocess", "tiny_ts"]
    assert "no onnxruntime backend" in served.server.plan.skipped["tiny_native"]
    assert served.server.failed_models() == {}


@pytest.mark.slow
def test_serve_command_runs_until_sigterm(tiny_exports, tmp_path, free_ports):
    repo = tmp_path / "repo"
    package_artifact(tiny_exports["onnx"], repo, "tiny", options=PackageOptions(backend="python"))
    package_artifact(tiny_exports["onnx"], repo, "tiny_native")
    ports = free_ports()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "toolkit", "serve", "--repo", str(repo), "--log-file", str(log)]
    for option, port in ports.items():
        cmd += [f"--{option.replace('_', '-')}", str(port)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C") or line.startswith("Error"):
                break
        text = "".join(lines)
        assert "skipped tiny_native: this tritonserver has no onnxruntime backend" in text, text
        assert "serving tiny\n" in text and f"127.0.0.1:{ports['grpc_port']}" in text
        with TritonClient(f"127.0.0.1:{ports['grpc_port']}") as client:
            assert client.infer("tiny", np.zeros((1, 1, 16, 16), np.float32)).shape == (1, 10)
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[0]
        assert process.returncode == 0, rest
        assert "stopped (tritonserver exit status 0)" in rest
        assert "successfully loaded 'tiny'" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
