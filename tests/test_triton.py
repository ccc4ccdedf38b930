"""Triton: repository configs, a real pip-installed tritonserver, the client and the CLI.

One module-scoped server (python backend) serves the tiny digits model as ONNX (with the
preprocessing ensemble) and TorchScript; the restart test runs last because it replaces it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts import open_runner
from toolkit.bench.load import measure_serving
from toolkit.data import preprocess_images
from toolkit.errors import DlkitError
from toolkit.triton.client import TritonClient
from toolkit.triton.configs import ServingOptions, read_config
from toolkit.triton.repository import PackageOptions, package_artifact
from toolkit.triton.server import TritonServer, free_port

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the pip-installed tritonserver is Linux-only"
)
START_TIMEOUT = 300  # stubs import torch; a busy 2-core machine needs time


@pytest.fixture(scope="module")
def artifacts(tiny_run, tmp_path_factory) -> dict[str, str]:
    """The tiny digits checkpoint exported to ONNX and TorchScript."""
    from click.testing import CliRunner

    from toolkit.cli import cli

    out = tmp_path_factory.mktemp("triton-export")
    args = ["export", tiny_run["best_checkpoint"], "--out", str(out), "--json"]
    result = json.loads(CliRunner().invoke(cli, args, catch_exceptions=False).stdout)
    return {a["format"]: a["path"] for a in result["artifacts"]}


@pytest.fixture(scope="module")
def images(digits_dir) -> list[str]:
    return [str(p) for p in sorted((digits_dir / "val").rglob("*.png"))[::29][:12]]


def _ports() -> dict[str, int]:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


@dataclass
class Served:
    server: TritonServer
    repo: Path

    @property
    def grpc(self) -> str:
        return self.server.grpc_url

    @property
    def http(self) -> str:
        return self.server.http_url


@pytest.fixture(scope="module")
def served(artifacts, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "model_repository"
    python = PackageOptions(backend="python", serving=ServingOptions(max_queue_delay_us=500))
    with_images = dataclasses.replace(python, preprocess=True)
    package_artifact(artifacts["onnx"], repo, "tiny", options=with_images)
    package_artifact(artifacts["torchscript"], repo, "tiny_ts", options=python)
    package_artifact(artifacts["onnx"], repo, "tiny_native")  # not servable here: skipped
    server = TritonServer(repo, **_ports())
    handle = Served(server, repo)
    try:
        server.start(START_TIMEOUT)
        yield handle
    finally:
        handle.server.stop()  # the restart test may have replaced it


# ----------------------------------------------------------------------------- repository


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.mark.slow
def test_native_configs_parse_back_through_the_protobuf(artifacts, tiny_run, tmp_path):
    from toolkit.variants.export import export_checkpoint

    repo = tmp_path / "repo"
    onnx = package_artifact(artifacts["onnx"], repo, "digits_onnx")
    ts = package_artifact(artifacts["torchscript"], repo, "digits_ts")
    assert (onnx.platform, ts.platform) == ("onnxruntime_onnx", "pytorch_libtorch")
    config = _parse(repo / "digits_onnx" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("input", "TYPE_FP32", [1, 16, 16])
    ]
    assert [(t.name, list(t.dims), t.label_filename) for t in config.output] == [
        ("logits", [10], "labels.txt")
    ]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.model_warmup[0].inputs["input"].zero_data
    assert config.parameters["intra_op_thread_count"].string_value == "0"
    assert '"classes": ["0", "1"' in config.parameters["dlkit"].string_value
    assert (repo / "digits_onnx" / "1" / "model.onnx").is_file()
    assert (repo / "digits_onnx" / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    config = _parse(repo / "digits_ts" / "config.pbtxt")
    assert config.platform == "pytorch_libtorch" and config.default_model_filename == "model.pt"
    assert [t.name for t in config.input] == ["INPUT__0"]
    assert [t.name for t in config.output] == ["OUTPUT__0"]
    assert (repo / "digits_ts" / "1" / "model.pt").is_file()
    # A fixed batch of 4: Triton must not batch it, and the dims carry the batch.
    [static] = export_checkpoint(
        tiny_run["best_checkpoint"], tmp_path / "static", ("onnx",), static_batch=4
    )
    result = package_artifact(static.path, repo, "digits_static")
    config = _parse(repo / "digits_static" / "config.pbtxt")
    assert result.max_batch_size == 0 == config.max_batch_size
    assert list(config.input[0].dims) == [4, 1, 16, 16] and not config.HasField("dynamic_batching")
    with pytest.raises(DlkitError, match="fixed batch size"):
        options = PackageOptions(serving=ServingOptions(max_batch_size=8))
        package_artifact(static.path, repo, "x", options=options)


@pytest.mark.slow
def test_new_versions_are_atomic_and_leave_old_ones_untouched(
    artifacts, tiny_run, tmp_path, monkeypatch
):
    import toolkit.triton.repository as repository

    repo = tmp_path / "repo"
    package_artifact(artifacts["onnx"], repo, "m")
    before = (repo / "m" / "1" / "model.onnx").stat()
    assert package_artifact(artifacts["onnx"], repo, "m").version == 2
    after = (repo / "m" / "1" / "model.onnx").stat()
    assert (before.st_mtime_ns, before.st_ino) == (after.st_mtime_ns, after.st_ino)
    # A copy that fails half-way leaves no version 3 and no temporary folder.
    real_copy = shutil.copyfile

    def failing_copy(src, dst, *args, **kwargs):
        real_copy(src, dst, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(repository.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        package_artifact(artifacts["onnx"], repo, "m", options=PackageOptions(backend="native"))
    monkeypatch.undo()
    assert sorted(p.name for p in (repo / "m").iterdir()) == [
        "1",
        "2",
        "config.pbtxt",
        "labels.txt",
    ]
    with pytest.raises(DlkitError, match="already exists"):
        package_artifact(artifacts["onnx"], repo, "m", version=2)
    with pytest.raises(DlkitError, match="different format"):  # TorchScript into an ONNX model
        package_artifact(artifacts["torchscript"], repo, "m")
    with pytest.raises(DlkitError, match="is a checkpoint"):
        package_artifact(tiny_run["best_checkpoint"], repo, "c")
    assert not list(repo.rglob(".*tmp*"))


@pytest.mark.slow
def test_package_cli_names_models_after_their_files(dlkit, artifacts, tmp_path):
    repo = tmp_path / "repo"
    out = dlkit.json(
        "package",
        artifacts["onnx"],
        artifacts["torchscript"],
        "--repo",
        repo,
        "--backend",
        "python",
        "--instances",
        "2",
    )
    assert [m["model"] for m in out["models"]] == ["best_onnx", "best_torchscript"]
    assert all(m["backend"] == "python" and m["version"] == 1 for m in out["models"])
    config = read_config(repo / "best_torchscript" / "config.pbtxt")
    assert config.backend == "python" and config.instance_group[0].count == 2
    assert sorted(p.name for p in (repo / "best_torchscript" / "1").iterdir()) == [
        "model.pt",
        "model.py",
    ]
    result = dlkit("package", artifacts["onnx"], "--repo", repo, "--name", "bad name", expect=1)
    assert result.output.startswith("Error: model name 'bad name'")


# --------------------------------------------------------------------------------- serving


@pytest.mark.slow
def test_server_skips_what_its_backends_cannot_serve(served):
    assert served.server.plan.load == ["tiny", "tiny_ensemble", "tiny_preprocess", "tiny_ts"]
    assert "no onnxruntime backend" in served.server.plan.skipped["tiny_native"]
    assert served.server.failed_models() == {}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_predictions_equal_the_local_runner(served, artifacts, protocol):
    batch = np.random.default_rng(1).standard_normal((45, 1, 16, 16)).astype(np.float32)
    expected = open_runner(artifacts["onnx"])(batch)
    with TritonClient(getattr(served, protocol), protocol=protocol) as client:
        assert client.model("tiny").max_batch_size == 32  # 45 rows: split into two requests
        np.testing.assert_allclose(client.infer("tiny", batch), expected, atol=1e-5)
        np.testing.assert_allclose(client.infer("tiny_ts", batch), expected, atol=1e-5)
        assert client.info("tiny").classes == tuple(str(d) for d in range(10))


@pytest.mark.slow
def test_preprocessing_ensemble_sees_the_same_pixels(served, artifacts, images):
    local = open_runner(artifacts["onnx"])
    pixels = preprocess_images(images, local.info.preprocessing)
    with TritonClient(served.grpc) as client:
        encoded = client.prepare("tiny_ensemble", images)
        assert encoded.dtype == object and encoded.shape == (len(images), 1)
        np.testing.assert_array_equal(client.infer("tiny_preprocess", encoded), pixels)
        np.testing.assert_allclose(client.infer("tiny_ensemble", encoded), local(pixels), atol=1e-5)
        assert client.classify("tiny_ensemble", images, 2) == client.classify("tiny", images, 2)
        with pytest.raises(DlkitError, match="corrupt or unreadable image: image 0 of the request"):
            client.infer("tiny_ensemble", np.array([[b"not a png"]], dtype=object))


@pytest.mark.slow
def test_top_k_from_the_servers_labels(served, artifacts):
    batch = np.random.default_rng(2).standard_normal((3, 1, 16, 16)).astype(np.float32)
    logits = open_runner(artifacts["onnx"])(batch)
    with TritonClient(served.http, protocol="http") as client:
        ranked = client.server_top_k("tiny", batch, k=3)
    for row, scores in zip(ranked, logits, strict=True):
        order = np.argsort(-scores)[:3]
        assert [r["index"] for r in row] == order.tolist()
        assert [r["label"] for r in row] == [str(i) for i in order]
        np.testing.assert_allclose([r["score"] for r in row], scores[order], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory(served, artifacts, protocol):
    batch = np.random.default_rng(3).standard_normal((40, 1, 16, 16)).astype(np.float32)
    expected = open_runner(artifacts["onnx"])(batch)
    with TritonClient(getattr(served, protocol), protocol=protocol, shared_memory=True) as client:
        for rows in (40, 5):  # regions are reused, then grown when needed
            np.testing.assert_allclose(
                client.infer("tiny", batch[:rows]), expected[:rows], atol=1e-5
            )
    with pytest.raises(DlkitError, match="one server on this machine"):
        TritonClient("grpc://192.0.2.1:8001", shared_memory=True)


@pytest.mark.slow
def test_eight_concurrent_clients(served, artifacts):
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((1 + i % 3, 1, 16, 16)).astype(np.float32) for i in range(50)]
    expected = [open_runner(artifacts["onnx"])(b) for b in batches]
    failures, mismatches = [], []

    def client_thread(seed: int) -> None:
        with TritonClient(served.grpc) as client:
            for i in range(50):
                k = (i + seed) % 50
                try:
                    out = client.infer("tiny", batches[k])
                except Exception as exc:
                    failures.append(exc)
                    continue
                if not np.allclose(out, expected[k], atol=1e-5):
                    mismatches.append(k)

    threads = [threading.Thread(target=client_thread, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and mismatches == []
    with TritonClient(served.grpc) as client:  # and infer_many keeps the order
        outs = client.infer_many("tiny", batches[:16], concurrency=8)
    for out, want in zip(outs, expected[:16], strict=True):
        np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.slow
def test_mistakes_give_clear_errors_and_the_server_stays_up(served):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    good = np.zeros((2, 1, 16, 16), np.float32)
    with TritonClient(served.grpc) as client:
        with pytest.raises(DlkitError, match=r"expects input input of shape \(N, 1, 16, 16\)"):
            client.infer("tiny", np.zeros((2, 1, 8, 8), np.float32))
        with pytest.raises(DlkitError, match="expects FP32 input; got float64"):
            client.infer("tiny", good.astype(np.float64))
        with pytest.raises(DlkitError, match=r"model 'nope' is not served at .*'tiny'"):
            client.infer("nope", good)
        # The server itself rejects what slips past a client that does not check.
        raw = grpcclient.InferenceServerClient(served.grpc)
        bad = grpcclient.InferInput("input", [2, 1, 8, 8], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 1, 8, 8), np.float32))
        with pytest.raises(InferenceServerException, match="unexpected shape"):
            raw.infer("tiny", [bad])
        raw.close()
        assert client.is_ready("tiny")
        assert client.infer("tiny", good).shape == (2, 10)


@pytest.mark.slow
def test_eval_and_predict_against_the_server(served, dlkit, artifacts, images):
    local = dlkit.json("eval", artifacts["onnx"])
    remote = dlkit.json("eval", f"grpc://{served.grpc}/tiny")
    assert remote["accuracy"] == local["accuracy"]
    assert remote["confusion_matrix"] == local["confusion_matrix"]
    mine = dlkit.json("predict", artifacts["onnx"], *images[:3], "--top-k", "2")
    for args in (
        ["--url", served.grpc, "--model", "tiny_ensemble"],
        ["--url", f"http://{served.http}/tiny"],
    ):
        theirs = dlkit.json("predict", *args, *images[:3], "--top-k", "2")
        for a, b in zip(mine["predictions"], theirs["predictions"], strict=True):
            assert [c["label"] for c in a["top_k"]] == [c["label"] for c in b["top_k"]]
            assert a["top_k"][0]["probability"] == pytest.approx(b["top_k"][0]["probability"])
    result = dlkit("predict", "--url", "127.0.0.1:1", "--model", "tiny", images[0], expect=1)
    assert "not reachable" in result.output and "dlkit serve" in result.output


@pytest.mark.slow
def test_measure_serving(served):
    levels = measure_serving(served.grpc, "tiny", (1, 2), duration=1.0, warmup=0.2)
    assert [lv.concurrency for lv in levels] == [1, 2]
    for level in levels:
        assert level.failures == 0 and level.requests > 0 and level.throughput > 0
        latency = level.latency_ms
        assert set(latency) == {"p50", "p90", "p95", "p99", "mean", "std", "min"}
        assert 0 < latency["min"] <= latency["p50"] <= latency["p99"]


@pytest.mark.slow
def test_bench_against_the_served_model(served, dlkit):
    out = dlkit.json(
        "bench", "--url", served.grpc, "--model", "tiny", "--concurrency", "1,2",
        "--duration", "0.5", "--batch-sizes", "1",
    )  # fmt: skip
    assert [r["concurrency"] for r in out["results"]] == [1, 2]
    assert all(r["variant"] == "triton:tiny" and r["failures"] == 0 for r in out["results"])
    assert out["results"][0]["latency_ms"]["p50"] > 0 and "environment" in out
    result = dlkit("bench", "--url", served.grpc, expect=1)
    assert "give --model NAME" in result.output


def test_unreachable_server_and_bad_urls():
    start = time.monotonic()
    with pytest.raises(DlkitError, match=r"not reachable .* after 2 tries; start it with"):
        TritonClient(f"127.0.0.1:{free_port()}", retries=1, backoff=0.05).metadata("m")
    assert time.monotonic() - start < 10
    with pytest.raises(DlkitError, match="unknown protocol"):
        TritonClient("ftp://host:1")
    with pytest.raises(DlkitError, match="no model in"):
        open_runner("grpc://127.0.0.1:1")


def test_serve_refuses_a_port_in_use(dlkit, tmp_path):
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
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


@pytest.mark.slow
def test_serve_command_runs_until_sigterm(artifacts, tmp_path):
    repo = tmp_path / "repo"
    package_artifact(artifacts["onnx"], repo, "tiny", options=PackageOptions(backend="python"))
    package_artifact(artifacts["onnx"], repo, "tiny_native")
    ports = _ports()
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


@pytest.mark.slow
def test_client_retries_survive_a_server_restart(served):
    """Last: it replaces the module's server with a new one on the same ports."""
    batch = np.zeros((2, 1, 16, 16), np.float32)
    client = TritonClient(served.grpc, retries=20, backoff=0.5)  # up to ~70 s
    before = client.infer("tiny", batch)
    old = served.server
    old.stop()
    served.server = TritonServer(
        served.repo,
        http_port=old.ports["http"],
        grpc_port=old.ports["grpc"],
        metrics_port=old.ports["metrics"],
    )
    starter = threading.Thread(target=served.server.start, args=(START_TIMEOUT,))
    starter.start()
    try:
        np.testing.assert_array_equal(client.infer("tiny", batch), before)
    finally:
        starter.join()
        client.close()
