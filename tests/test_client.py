"""TritonClient against real tritonservers (and hostile peers): answers equal the local runner's,
checks before sending, a deadline on every call, clear errors, several endpoints and failover,
and the commands that use it (`predict --url`, `eval grpc://`, `bench --url`)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import sys
import threading
import time

import numpy as np
import pytest

from toolkit.artifacts import open_runner
from toolkit.bench.load import measure_serving
from toolkit.data import preprocess_images
from toolkit.errors import DlkitError
from toolkit.triton.client import ImagesFailed, TritonClient
from toolkit.triton.server import TritonServer, free_port
from toolkit.triton.statistics import snapshot

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the pip-installed tritonserver is Linux-only"
)


# ------------------------------------------------------------------------ answers and checks


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_predictions_equal_the_local_runner(served, tiny_exports, protocol):
    batch = np.random.default_rng(1).standard_normal((45, 1, 16, 16)).astype(np.float32)
    expected = open_runner(tiny_exports["onnx"])(batch)
    with TritonClient(getattr(served, protocol), protocol=protocol) as client:
        assert client.model("tiny").max_batch_size == 32  # 45 rows: split into two requests
        np.testing.assert_allclose(client.infer("tiny", batch), expected, atol=1e-5)
        np.testing.assert_allclose(client.infer("tiny_ts", batch), expected, atol=1e-5)
        assert client.info("tiny").classes == tuple(str(d) for d in range(10))


@pytest.mark.slow
def test_preprocessing_ensemble_sees_the_same_pixels(served, tiny_exports, digit_images):
    local = open_runner(tiny_exports["onnx"])
    pixels = preprocess_images(digit_images, local.info.preprocessing)
    with TritonClient(served.grpc) as client:
        encoded = client.prepare("tiny_ensemble", digit_images)
        assert encoded.dtype == object and encoded.shape == (len(digit_images), 1)
        np.testing.assert_array_equal(client.infer("tiny_preprocess", encoded), pixels)
        np.testing.assert_allclose(client.infer("tiny_ensemble", encoded), local(pixels), atol=1e-5)
        assert client.classify("tiny_ensemble", digit_images, 2) == client.classify(
            "tiny", digit_images, 2
        )
        with pytest.raises(DlkitError, match="corrupt or unreadable image: image 0 of the request"):
            client.infer("tiny_ensemble", np.array([[b"not a png"]], dtype=object))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_ensemble", "tiny"])
def test_classify_answers_the_good_images_and_names_the_bad(served, digit_images, tmp_path, model):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    missing = tmp_path / "missing.png"
    images = [digit_images[0], str(bad), digit_images[1], str(missing)]
    with TritonClient(served.grpc) as client:
        good = client.classify(model, [digit_images[0], digit_images[1]], 2)
        with pytest.raises(ImagesFailed) as caught:
            client.classify(model, images, 2)
    error = caught.value
    assert sorted(error.failed) == [1, 3]
    assert str(bad) in error.failed[1] and str(missing) in error.failed[3]
    assert str(error).startswith("2 of 4 images could not be classified")
    assert error.results[0] == good[0] and error.results[2] == good[1]
    assert error.results[1] is None and error.results[3] is None


@pytest.mark.slow
def test_top_k_from_the_servers_labels(served, tiny_exports):
    batch = np.random.default_rng(2).standard_normal((3, 1, 16, 16)).astype(np.float32)
    logits = open_runner(tiny_exports["onnx"])(batch)
    with TritonClient(served.http, protocol="http") as client:
        ranked = client.server_top_k("tiny", batch, k=3)
    for row, scores in zip(ranked, logits, strict=True):
        order = np.argsort(-scores)[:3]
        assert [r["index"] for r in row] == order.tolist()
        assert [r["label"] for r in row] == [str(i) for i in order]
        np.testing.assert_allclose([r["score"] for r in row], scores[order], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory(served, tiny_exports, protocol):
    batch = np.random.default_rng(3).standard_normal((40, 1, 16, 16)).astype(np.float32)
    expected = open_runner(tiny_exports["onnx"])(batch)
    with TritonClient(getattr(served, protocol), protocol=protocol, shared_memory=True) as client:
        for rows in (40, 5):  # regions are reused, then grown when needed
            np.testing.assert_allclose(
                client.infer("tiny", batch[:rows]), expected[:rows], atol=1e-5
            )
        mine = {name for _, _, name in client.shm._regions}
        assert len(mine) == 2 and mine <= registered_regions(served.grpc)
    assert not registered_regions(served.grpc) & mine  # closing unregistered them
    with pytest.raises(DlkitError, match="one server on this machine"):
        TritonClient("grpc://192.0.2.1:8001", shared_memory=True)


@pytest.mark.slow
def test_a_served_runner_closes_its_client(served):
    """What a TritonRunner opened (here its shared-memory regions on the server) is released
    when it is closed, as `with open_runner(url)` does."""
    before = registered_regions(served.grpc)  # the session's server may hold others' regions
    with open_runner(f"grpc://{served.grpc}/tiny", shared_memory=True) as runner:
        runner(np.zeros((2, 1, 16, 16), np.float32))
        mine = registered_regions(served.grpc) - before
        assert len(mine) == 2  # its input and output regions
    assert not registered_regions(served.grpc) & mine
    runner.close()  # twice is harmless


def registered_regions(address: str) -> set[str]:
    """The system shared-memory regions registered with the server at `address` (gRPC)."""
    import tritonclient.grpc as grpcclient

    raw = grpcclient.InferenceServerClient(address)
    try:
        return set(raw.get_system_shared_memory_status(as_json=True).get("regions", {}))
    finally:
        raw.close()


@pytest.mark.slow
def test_eight_concurrent_clients(served, tiny_exports):
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((1 + i % 3, 1, 16, 16)).astype(np.float32) for i in range(50)]
    expected = [open_runner(tiny_exports["onnx"])(b) for b in batches]
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
        with pytest.raises(
            DlkitError, match=r"model 'nope' is not served at .* tiny \(version 1\)"
        ):
            client.infer("nope", good)
        for value in (np.nan, np.inf, -np.inf):
            poisoned = good.copy()
            poisoned[1, 0, 3, 4] = value
            with pytest.raises(DlkitError, match="got NaN or infinite values"):
                client.infer("tiny", poisoned)
        with pytest.raises(DlkitError, match="got an empty batch; send at least one image"):
            client.infer("tiny", good[:0])
        # The server itself rejects what slips past a client that does not check.
        raw = grpcclient.InferenceServerClient(served.grpc)
        bad = grpcclient.InferInput("input", [2, 1, 8, 8], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 1, 8, 8), np.float32))
        with pytest.raises(InferenceServerException, match="unexpected shape"):
            raw.infer("tiny", [bad])
        raw.close()
        assert client.is_ready("tiny")
        assert client.infer("tiny", good).shape == (2, 10)


def _raw_infer(protocol: str, url: str, model: str, batch: np.ndarray, name: str = "input"):
    """One request through tritonclient itself: no dlkit check on the way."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(url)
    try:
        tensor = module.InferInput(name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return client.infer(model, [tensor]).as_numpy("logits")
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_served_models_refuse_non_finite_inputs_and_stay_up(served, protocol):
    """Raw tritonclient, past every client check: the python-backend model refuses NaN, ±inf
    and mixed batches with Triton's error, request by request, and answers the next one."""
    from tritonclient.utils import InferenceServerException

    url = served.grpc if protocol == "grpc" else served.http
    good = np.random.default_rng(0).standard_normal((3, 1, 16, 16)).astype(np.float32)
    for model in ("tiny", "tiny_ts"):
        expected = _raw_infer(protocol, url, model, good)
        poisons = {"nan": [np.nan], "inf": [np.inf], "-inf": [-np.inf], "mixed": [np.inf, -np.inf]}
        for what, values in poisons.items():
            poisoned = good.copy()
            for i, value in enumerate(values):
                poisoned[i, 0, 3, 4] = value
            with pytest.raises(InferenceServerException, match="NaN or infinite values") as caught:
                _raw_infer(protocol, url, model, poisoned)
            assert "Traceback" not in str(caught.value), what
        np.testing.assert_array_equal(_raw_infer(protocol, url, model, good), expected)
    with TritonClient(served.grpc) as client:
        assert client.is_ready("tiny") and client.is_ready("tiny_ts")


@pytest.mark.slow
def test_a_poisoned_request_in_a_dynamic_batch_fails_alone(served):
    """Requests batched together: the one with NaN is refused, the others are answered."""
    from tritonclient.utils import InferenceServerException

    good = np.random.default_rng(1).standard_normal((1, 1, 16, 16)).astype(np.float32)
    expected = _raw_infer("grpc", served.grpc, "tiny", good)
    poisoned = good.copy()
    poisoned[0, 0, 0, 0] = np.nan
    outcomes: dict[int, object] = {}

    def send(i: int) -> None:
        try:
            outcomes[i] = _raw_infer("grpc", served.grpc, "tiny", poisoned if i == 0 else good)
        except InferenceServerException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "NaN or infinite values" in str(outcomes[0])
    for i in range(1, 8):
        np.testing.assert_array_equal(outcomes[i], expected)


@pytest.mark.slow
def test_eval_and_predict_against_the_server(served, dlkit, tiny_exports, digit_images):
    local = dlkit.json("eval", tiny_exports["onnx"])
    remote = dlkit.json("eval", f"grpc://{served.grpc}/tiny")
    assert remote["accuracy"] == local["accuracy"]
    assert remote["confusion_matrix"] == local["confusion_matrix"]
    mine = dlkit.json("predict", tiny_exports["onnx"], *digit_images[:3], "--top-k", "2")
    for args in (
        ["--url", served.grpc, "--model", "tiny_ensemble"],
        ["--url", f"http://{served.http}/tiny"],
    ):
        theirs = dlkit.json("predict", *args, *digit_images[:3], "--top-k", "2")
        for a, b in zip(mine["predictions"], theirs["predictions"], strict=True):
            assert [c["label"] for c in a["top_k"]] == [c["label"] for c in b["top_k"]]
            assert a["top_k"][0]["probability"] == pytest.approx(b["top_k"][0]["probability"])
    result = dlkit("predict", "--url", "127.0.0.1:1", "--model", "tiny", digit_images[0], expect=1)
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


# ----------------------------------------------------------------- hostile and absent peers


def test_unreachable_server_and_bad_urls():
    start = time.monotonic()
    with pytest.raises(DlkitError, match=r"not reachable .* after 2 tries; start it with"):
        TritonClient(f"127.0.0.1:{free_port()}", retries=1, backoff=0.05).metadata("m")
    assert time.monotonic() - start < 10
    with pytest.raises(DlkitError, match="unknown protocol"):
        TritonClient("ftp://host:1")
    with pytest.raises(DlkitError, match="no model in"):
        open_runner("grpc://127.0.0.1:1")


def test_urls_name_a_model_and_optionally_one_version():
    from toolkit.triton.endpoints import parse_url, split_model

    assert parse_url("grpc://127.0.0.1:8001/faces/1").model == "faces/1"
    assert parse_url("http://127.0.0.1:8000/faces").model == "faces"
    assert split_model("faces/12") == ("faces", "12") and split_model("faces") == ("faces", "")
    for bad in ("faces/x", "faces/1/2", "faces/0", "faces/1.5"):
        with pytest.raises(DlkitError, match=r"is not MODEL or MODEL/VERSION"):
            parse_url(f"grpc://127.0.0.1:8001/{bad}")


class Peer:
    """A TCP peer on loopback that accepts connections and then never answers (`silent`),
    reads the request and hangs up (`hang_up`, as a server does that stops mid-request),
    says nothing for 2 s and then hangs up (`stall`: what gRPC makes of a silent peer, at a
    smaller scale: it gives up connecting after ~20 s with a retryable status), or answers
    HTTP headers and then the body one byte a second (`drip`)."""

    def __init__(self, mode: str = "silent"):
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            if self.mode != "silent":
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        if self.mode == "stall":
            self.closed.wait(2.0)
            conn.close()
            return
        with contextlib.suppress(OSError):
            conn.settimeout(2)
            conn.recv(65536)
            if self.mode == "hang_up":
                conn.close()
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not self.closed.wait(1.0):  # at most until the test closes the peer
                conn.sendall(b" ")

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.mark.parametrize(("protocol", "mode"), [("grpc", "silent"), ("http", "silent"),
                                                ("http", "drip")])  # fmt: skip
def test_a_peer_that_never_finishes_costs_one_deadline(protocol, mode):
    peer = Peer(mode)
    try:
        start = time.monotonic()
        client = TritonClient(f"{protocol}://127.0.0.1:{peer.port}", timeout=3, retries=1)
        with pytest.raises(DlkitError, match="did not answer within 3 s"):
            client.infer("m", np.zeros((1, 3), np.float32))
        assert time.monotonic() - start < 10
    finally:
        peer.close()


def test_one_deadline_bounds_a_call_and_its_retries():
    """Each gRPC try at a stalling peer fails after 2 s with a retryable status: four tries
    and their backoff took 9.8 s against a 4 s timeout; they now share the one deadline."""
    peer = Peer("stall")
    try:
        start = time.monotonic()
        client = TritonClient(f"grpc://127.0.0.1:{peer.port}", timeout=4, retries=3)
        with pytest.raises(DlkitError, match="did not answer within 4 s"):
            client.metadata("m")
        assert time.monotonic() - start < 7
    finally:
        peer.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_predict_against_a_silent_peer_ends_with_an_error(dlkit, digit_images, protocol):
    peer = Peer()
    try:
        start = time.monotonic()
        url = f"{protocol}://127.0.0.1:{peer.port}"
        args = ["predict", "--url", url, "--model", "m", digit_images[0], "--timeout", "2"]
        result = dlkit(*args, expect=1)
        assert result.output.startswith("Error: Triton server at") and "did not answer" in (
            result.output
        )
        assert time.monotonic() - start < 8
    finally:
        peer.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_peer_that_hangs_up_mid_request_gives_a_dlkit_error(protocol):
    peer = Peer("hang_up")
    try:
        client = TritonClient(f"{protocol}://127.0.0.1:{peer.port}", timeout=3, retries=1)
        with pytest.raises(DlkitError, match="not reachable"):
            client.infer("m", np.zeros((1, 3), np.float32))
    finally:
        peer.close()


# -------------------------------------------------------------------- several endpoints


@pytest.mark.slow
def test_two_servers_one_killed_under_load_loses_no_request(
    served, start_triton, dlkit, digit_images
):
    """A second server on the same repository; a bounded load over both; the second is
    killed (SIGKILL) in the middle. Every request must still be answered."""
    import os
    import signal

    other = start_triton(served.repo, models=["tiny", "tiny_preprocess", "tiny_ensemble"])
    try:
        urls = [served.grpc, other.grpc_url]
        out = dlkit.json(
            "bench", "--url", ",".join(urls), "--model", "tiny", "--concurrency", "2",
            "--duration", "0.5", "--batch-sizes", "1",
        )  # fmt: skip
        assert out["results"][0]["failures"] == 0 and out["results"][0]["requests"] > 0
        args = ["predict", "--url", urls[0], "--url", urls[1], "--model", "tiny_ensemble"]
        before = dlkit.json(*args, *digit_images[:2])["predictions"]
        client = TritonClient(urls, timeout=10, cooldown=2.0)
        kill = lambda: os.killpg(other.process.pid, signal.SIGKILL)  # noqa: E731
        record = _bounded_load(client, 4, requests=400, seconds=60, kill_after=100, kill=kill)
        assert dlkit.json(*args, *digit_images[:2])["predictions"] == before
    finally:
        client.close()
    ok = [r for r in record["requests"] if r[2]]
    assert len(ok) == len(record["requests"]) == 400, record["errors"][:3]
    after = [end - start for start, end, _ in ok if end > record["killed_at"]]
    print(
        f"\nfailover: {len(ok)} requests, none lost; {record['throughput']:.0f} req/s; "
        f"slowest request across the kill {max(after) * 1e3:.0f} ms"
    )


def _bounded_load(client, threads: int, requests: int, seconds: float, kill_after: int, kill):
    """`threads` threads share `requests` requests (stopping after `seconds` in any case);
    `kill()` runs once `kill_after` of them have been answered."""
    batch = np.zeros((1, 1, 16, 16), np.float32)
    counter = iter(range(requests))
    lock = threading.Lock()
    done: list[tuple[float, float, bool]] = []
    errors: list[str] = []
    killed_at = [float("inf")]
    deadline = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if next(counter, None) is None:
                    return
            start = time.monotonic()
            try:
                client.infer("tiny", batch)
                ok = True
            except DlkitError as exc:
                ok = False
                errors.append(str(exc))
            with lock:
                done.append((start, time.monotonic(), ok))
                if len(done) == kill_after:
                    killed_at[0] = time.monotonic()
                    kill()

    began = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - began
    return {
        "requests": done,
        "errors": errors,
        "killed_at": killed_at[0],
        "throughput": len(done) / elapsed,
    }


@pytest.mark.slow
def test_client_retries_survive_a_server_restart(served, triton_timeout):
    """It replaces the session's server with a new one on the same ports."""
    batch = np.zeros((2, 1, 16, 16), np.float32)
    client = TritonClient(served.grpc, retries=40, backoff=0.5)  # up to ~150 s: a busy machine
    before = client.infer("tiny", batch)
    old = served.server
    old.stop()
    served.server = TritonServer(
        served.repo,
        http_port=old.ports["http"],
        grpc_port=old.ports["grpc"],
        metrics_port=old.ports["metrics"],
    )
    starter = threading.Thread(target=served.server.start, args=(triton_timeout,))
    starter.start()
    try:
        np.testing.assert_array_equal(client.infer("tiny", batch), before)
    finally:
        starter.join()
        client.close()


class Nonsense:
    """An HTTP peer that answers every request 200 OK with `body` (not Triton's protocol)."""

    def __init__(self, body: bytes):
        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


NONSENSE = {
    "invalid JSON": b"{not json",
    "HTML": b"<html>busy</html>",
    "a number": b"5",
    "null": b"null",
    "a list": b"[]",
    "another object": b'{"x": 1}',
    "wrong tensor fields": json.dumps(
        {"name": 5, "inputs": [{"name": 1, "datatype": "FP32", "shape": ["a"]}], "outputs": 7}
    ).encode(),
}


@pytest.mark.parametrize("body", list(NONSENSE))
def test_a_peer_answering_nonsense_is_a_dlkit_error_from_every_method(body):
    peer = Nonsense(NONSENSE[body])
    client = TritonClient(peer.url, timeout=5, retries=0)
    calls = {
        "metadata": lambda: client.metadata("m"),
        "config": lambda: client.config("m"),
        "statistics": lambda: snapshot(client.statistics("m"), "m"),
        "infer": lambda: client.infer("m", np.zeros((1, 1, 16, 16), np.float32)),
        "classify": lambda: client.classify("m", np.zeros((1, 1, 16, 16), np.float32)),
    }
    if body != "a list":  # [] is a valid (empty) repository index
        calls["models"] = client.models
    try:
        for name, call in calls.items():
            with pytest.raises(DlkitError):
                call()
                pytest.fail(f"{name} accepted {body}")
    finally:
        client.close()
        peer.close()


@pytest.mark.parametrize("body", ["invalid JSON", "another object"])
def test_predict_eval_and_bench_against_nonsense_end_in_one_error_line(dlkit, digit_images, body):
    peer = Nonsense(NONSENSE[body])
    try:
        for command in (
            ["predict", "--url", peer.url, "--model", "m", digit_images[0]],
            ["eval", f"{peer.url}/m"],
            ["bench", "--url", peer.url, "--model", "m", "--duration", "0.5", "--concurrency", "1",
             "--batch-sizes", "1"],
        ):  # fmt: skip
            result = dlkit(*command, expect=1)
            last = result.output.strip().splitlines()[-1]
            assert last.startswith("Error:") and "Triton" in last, (command, result.output)
    finally:
        peer.close()
