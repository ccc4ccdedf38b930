"""`dlkit serve` and TritonServer on a real pip-installed tritonserver: what is skipped and why,
versions pinned for a rollback, a bounded drain on SIGTERM under load, a server that dies with
dlkit (kill -9 included), and a repository left as it was packaged."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts import open_runner
from toolkit.errors import DlkitError
from toolkit.triton.client import TritonClient
from toolkit.triton.configs import ServingOptions, config_json, read_config, write_config
from toolkit.triton.lifetime import OWNER_FILE, WORKDIR_PREFIX, reap_orphans, start_time
from toolkit.triton.plan import plan_repository
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


def test_plan_skips_what_cannot_load_and_keeps_the_rest(tmp_path):
    repo = tmp_path / "repo"
    _model(repo, "good", versions=(1, 2))
    _model(repo, "broken").joinpath("config.pbtxt").write_text('name: "broken" zzz {')
    _model(repo, "half_written", versions=(1, 2), files=()).joinpath("1", "model.py").touch()
    _model(repo, "huge", versions=(1, "9" * 20))
    _model(repo, "renamed").joinpath("config.pbtxt").write_text('name: "other" backend: "python"')
    policy = mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[7]))
    _model(repo, "pinned", version_policy=policy)
    _model(repo, "greedy", instance_group=[mc.ModelInstanceGroup(count=100_000)])
    (repo / "no_config" / "1").mkdir(parents=True)
    ensemble = mc.ModelConfig(name="pipeline", platform="ensemble")
    ensemble.ensemble_scheduling.step.add(model_name="good", model_version=-1)
    ensemble.ensemble_scheduling.step.add(model_name="half_written", model_version=-1)
    write_config(ensemble, repo / "pipeline" / "config.pbtxt")

    plan = plan_repository(repo, {"python", "ensemble"})
    assert plan.load == ["good"]
    skipped = plan.skipped
    assert 'has no field named "zzz"' in skipped["broken"]
    assert skipped["half_written"].startswith("version 2 has no model.py (half-written?)")
    assert "beyond what Triton can number" in skipped["huge"]
    assert "names it 'other'" in skipped["renamed"]
    assert "picks none of its versions ([1])" in skipped["pinned"]
    assert skipped["greedy"] == "it asks for 100000 instances; dlkit serves at most 64"
    assert skipped["no_config"] == "no config.pbtxt"
    assert skipped["pipeline"] == "its step model half_written cannot be served"
    with pytest.raises(DlkitError, match="no model nope in"):
        plan_repository(repo, {"python"}, only=["nope"])


def test_serve_refuses_a_port_in_use(dlkit, tmp_path):
    repo = tmp_path / "repo"
    _model(repo, "m")
    with socket_on_port() as port:
        # the hand-made model is not what dlkit writes: --trust, to get as far as the port
        result = dlkit("serve", "--repo", repo, "--http-port", port, "--trust", expect=1)
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
def test_serving_leaves_the_repository_as_packaged(served, digit_images, folder_snapshot):
    """The python stubs import model.py from the version folders: no __pycache__ there."""
    with TritonClient(served.grpc) as client:
        client.classify("tiny_ensemble", digit_images[:2])
        client.infer("tiny_ts", np.zeros((1, 1, 16, 16), np.float32))
    assert folder_snapshot(served.repo) == served.packaged


# ---------------------------------------------------------------------- versions, rollback


@pytest.mark.slow
def test_rollback_each_version_loads_pinned_and_answers(tiny_exports, tmp_path, start_triton):
    """Versions 1 and 2 of one model (other weights, same signature); the repository API
    loads the model pinned to version 1, then to both: each answers as its own file."""
    repo = tmp_path / "repo"
    second = _reweighted(tiny_exports["onnx"], tmp_path / "second.onnx")
    package_artifact(tiny_exports["onnx"], repo, "m", options=PYTHON)
    package_artifact(second, repo, "m", options=PYTHON)
    server = start_triton(repo, models=["m"])
    batch = np.random.default_rng(5).standard_normal((3, 1, 16, 16)).astype(np.float32)
    expected = {"1": open_runner(tiny_exports["onnx"])(batch), "2": open_runner(second)(batch)}
    assert not np.allclose(expected["1"], expected["2"])
    import tritonclient.grpc as grpcclient

    raw = grpcclient.InferenceServerClient(server.grpc_url)
    config = read_config(repo / "m" / "config.pbtxt")
    try:
        assert _infer(raw, batch, "") == pytest.approx(expected["2"], abs=1e-5)  # latest
        for pinned in ([1], [1, 2]):
            config.version_policy.specific.versions[:] = pinned
            raw.load_model("m", config=config_json(config))
            for version in map(str, pinned):
                assert raw.is_model_ready("m", version)
                answer = _infer(raw, batch, version)
                np.testing.assert_allclose(answer, expected[version], atol=1e-5)
        assert not raw.is_model_ready("m", "3")
    finally:
        raw.close()


@pytest.mark.slow
def test_versions_you_can_see_serve_load_and_name_in_urls(
    dlkit, tiny_exports, digit_images, tmp_path
):
    """Two versions of one model (other weights, another checkpoint): `dlkit serve` names the
    versions it serves; a URL names one, for eval, predict and bench; a refusal lists each
    model once; `dlkit package` into the served repository says how to load what it wrote."""
    from toolkit.artifacts import read_info
    from toolkit.artifacts.onnx import write_info

    repo = tmp_path / "repo"
    second = _reweighted(tiny_exports["onnx"], tmp_path / "second.onnx")
    other = read_info(second).derive(source_checkpoint="/elsewhere/b.pt", source_sha256="b" * 64)
    write_info(second, other)
    package_artifact(tiny_exports["onnx"], repo, "m", options=PYTHON)
    package_artifact(second, repo, "m", options=PYTHON)
    package_artifact(tiny_exports["onnx"], repo, "textures", options=PYTHON)
    config = read_config(repo / "m" / "config.pbtxt")
    config.version_policy.all.SetInParent()
    write_config(config, repo / "m" / "config.pbtxt")
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    process, text = _serve(repo, *ports, "--log-file", str(tmp_path / "log"), "--timeout", "240")
    try:
        assert "serving m (versions 1, 2), textures (version 1)\n" in text, text
        grpc, http = _port(text, "gRPC"), _port(text, "HTTP")
        batch = np.random.default_rng(5).standard_normal((3, 1, 16, 16)).astype(np.float32)
        for version, artifact in (("1", tiny_exports["onnx"]), ("2", second)):
            runner = open_runner(f"grpc://127.0.0.1:{grpc}/m/{version}")
            np.testing.assert_allclose(runner(batch), open_runner(artifact)(batch), atol=1e-5)
            assert runner.info.source_sha256 == read_info(artifact).source_sha256
        url = f"grpc://127.0.0.1:{grpc}/m/2"
        assert dlkit.json("eval", url)["accuracy"] == dlkit.json("eval", second)["accuracy"]
        top = dlkit.json("predict", "--url", url, digit_images[0])["predictions"][0]["top_k"]
        assert (
            top[0]["label"]
            == dlkit.json("predict", second, digit_images[0])["predictions"][0]["top_k"][0]["label"]
        )
        bench = ["--concurrency", "1", "--duration", "0.3", "--batch-sizes", "1"]
        assert dlkit.json("bench", "--url", url, *bench)["results"][0]["failures"] == 0
        with pytest.raises(DlkitError) as refused, TritonClient(f"127.0.0.1:{grpc}") as client:
            client.infer("m/3", batch)
        assert str(refused.value).endswith(
            "it serves m (versions 1, 2), textures (version 1) (one version of a model: "
            "MODEL/VERSION)"
        )
        # Version 3 is written, but the server loaded m before it existed: say how to load it.
        options = ["--repo", repo, "--name", "m", "--max-queue-delay-us", "500"]
        out = dlkit.json("package", tiny_exports["onnx"], *options)
        [hint] = out["warnings"]
        load = f"curl -X POST http://127.0.0.1:{http}/v2/repository/models/m/load"
        assert "serves" in hint and "explicit model control" in hint and load in hint
        with TritonClient(f"127.0.0.1:{grpc}") as client:
            assert client.served_versions()["m"] == [1, 2]
            request = urllib.request.Request(load.split()[-1], method="POST")
            urllib.request.urlopen(request, timeout=120).close()  # what the hint says to run
            assert client.served_versions()["m"] == [1, 2, 3]
    finally:
        _end(process)


def _reweighted(source: str, target: Path) -> Path:
    """A copy of an ONNX file (same metadata and signature) with its weights scaled."""
    model = onnx.load(source)
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            array = onnx.numpy_helper.to_array(tensor) * 1.5
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    onnx.save(model, target)
    return target


def _infer(raw, batch: np.ndarray, version: str) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return raw.infer("m", [tensor], model_version=version).as_numpy("logits")


# ---------------------------------------------------------------------------- dlkit serve


def _serve(repo: Path, *options: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`dlkit serve` in a subprocess; returns it and what it printed until it was serving."""
    command = [sys.executable, "-m", "toolkit", "serve", "--repo", str(repo), *options]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(("Ctrl-C", "Error")):
            break
    return process, "".join(lines)


def _port(text: str, kind: str) -> int:
    return int(re.search(rf"{kind}\s+(?:http://)?127\.0\.0\.1:(\d+)", text).group(1))


@pytest.mark.slow
def test_serve_skips_bad_models_prints_real_ports_and_stops_on_sigterm(tiny_exports, tmp_path):
    repo = tmp_path / "repo"
    package_artifact(tiny_exports["onnx"], repo, "tiny", options=PYTHON)
    package_artifact(tiny_exports["onnx"], repo, "tiny_native")
    package_artifact(tiny_exports["torchscript"], repo, "tiny_ts", options=PYTHON)
    (repo / "tiny_ts" / "2").mkdir()  # half-written: it would hang the python backend
    (repo / "broken").mkdir()
    (repo / "broken" / "config.pbtxt").write_text("name: 'broken' {{{")
    log = tmp_path / "server.log"
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    process, text = _serve(repo, *ports, "--log-file", str(log), "--timeout", "120")
    try:
        assert "skipped tiny_native: this tritonserver has no onnxruntime backend" in text, text
        assert "skipped broken: cannot read Triton config" in text
        assert "skipped tiny_ts: version 2 has no model.py (half-written?)" in text
        assert "serving tiny (version 1)\n" in text
        grpc, http = _port(text, "gRPC"), _port(text, "HTTP")
        assert 0 not in (grpc, http)
        with TritonClient(f"127.0.0.1:{grpc}") as client:
            assert client.infer("tiny", np.zeros((1, 1, 16, 16), np.float32)).shape == (1, 10)
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[0]
        assert process.returncode == 0, rest
        assert "stopped (tritonserver exit status 0)" in rest
        assert "successfully loaded 'tiny'" in log.read_text()
    finally:
        _end(process)


@pytest.mark.slow
def test_sigterm_under_load_drains_within_the_drain_timeout(tiny_exports, tmp_path):
    repo = tmp_path / "repo"
    package_artifact(tiny_exports["onnx"], repo, "tiny", options=PYTHON)
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    process, text = _serve(repo, *ports, "--drain-timeout", "3", "--log-file", str(tmp_path / "l"))
    stop, answered = threading.Event(), []
    url = f"http://127.0.0.1:{_port(text, 'HTTP')}"

    def load() -> None:  # keep-alive HTTP connections, as a busy client holds them
        with TritonClient(url, timeout=5, retries=0) as client:
            for _ in range(5000):  # bounded, and stopped when the server is gone
                if stop.is_set():
                    return
                try:
                    client.infer("tiny", np.zeros((4, 1, 16, 16), np.float32))
                    answered.append(1)
                except DlkitError:
                    time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        while len(answered) < 50 and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[0]
        assert process.returncode == 0, rest
        # dlkit unloaded the model (its requests in flight answered) before it signalled
        # the server, which then stopped cleanly: status 0, not 1 (its exit timeout ran out
        # with the model loaded), -11 (the crash that path led to) or -9 (killed).
        assert "stopped (tritonserver exit status 0)" in rest, rest
        log = (tmp_path / "l").read_text()
        assert log.index("successfully unloaded 'tiny'") < log.index("Signal (15) received")
        assert "Exit timeout expired" not in log
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        _end(process)


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


@pytest.mark.slow
def test_kill_9_of_serve_takes_its_server_along(tiny_exports, tmp_path, free_ports):
    repo = tmp_path / "repo"
    package_artifact(tiny_exports["onnx"], repo, "tiny", options=PYTHON)
    ports = [f"--{k.replace('_', '-')}={v}" for k, v in free_ports().items()]
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    first, text = _serve(repo, *ports, "--log-file", str(tmp_path / "1.log"), env=env)
    try:
        assert "serving tiny" in text, text
        [server] = [p for p in _children(first.pid) if "tritonserver" in _command(p)]
        [workdir] = (tmp_path / "tmp").glob(f"{WORKDIR_PREFIX}*")
        _end(first)  # SIGKILL: dlkit cleans nothing up
        deadline = time.monotonic() + 60
        while start_time(server) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert start_time(server) is None, "tritonserver outlived dlkit serve"
        second, text = _serve(repo, *ports, "--log-file", str(tmp_path / "2.log"), env=env)
        try:
            assert "serving tiny" in text, text  # the ports are free again
            assert not workdir.exists()  # and the dead one's folder is gone
            second.send_signal(signal.SIGTERM)
            second.communicate(timeout=60)
            assert second.returncode == 0
        finally:
            _end(second)
    finally:
        _end(first)


def _command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_orphaned_servers_are_stopped_and_their_folders_removed(tmp_path):
    """A server whose dlkit died without stopping it (here a stand-in process in its own
    session, as tritonserver runs) is stopped by the next start; a live owner's is kept."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        for name, owner in (("orphan", dead.pid), ("live", os.getpid())):
            folder = tmp_path / f"{WORKDIR_PREFIX}{name}"
            folder.mkdir()
            record = {
                "dlkit": [owner, start_time(owner) or "gone"],
                "server": [orphan.pid, start_time(orphan.pid)],
            }
            (folder / OWNER_FILE).write_text(json.dumps(record))
        removed = reap_orphans(tmp_path, timeout=5)
        assert removed == [str(tmp_path / f"{WORKDIR_PREFIX}orphan")]
        assert orphan.wait(10) == -signal.SIGTERM
        assert (tmp_path / f"{WORKDIR_PREFIX}live").is_dir()
    finally:
        _end(orphan)


# ------------------------------------------------------------------------------- deploy


@pytest.mark.slow
def test_deploy_that_fails_after_packaging_says_the_repository_changed(
    tiny_run, tmp_path, monkeypatch
):
    """A tritonserver that cannot start fails the smoke test after the package stage wrote
    the models: the message must not claim the repository is as it was."""
    from toolkit.deploy import DeployConfig, deploy

    fake = tmp_path / "triton" / "bin" / "tritonserver"
    fake.parent.mkdir(parents=True)
    (tmp_path / "triton" / "backends" / "python").mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'no GPU, no luck' >&2\nexit 3\n")
    fake.chmod(0o755)
    config = DeployConfig(
        checkpoint=tiny_run["best_checkpoint"], out=str(tmp_path / "run"),
        repo=str(tmp_path / "repo"), batch_sizes=(1, 4), bench_seconds=0.05,
    )  # fmt: skip
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(DlkitError, match=r"(?s)stage 'smoke test'.*the repository was changed"):
        deploy(config)
    assert (tmp_path / "repo" / "classifier" / "1").is_dir()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["repository_changed"] and report["failed_stage"] == "smoke test"
