"""TritonClient against a real tritonserver: answers equal the local runner's, checks before
sending, clear errors, retries, and the commands that use it (`predict --url`, `eval grpc://`,
`bench --url`)."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from toolkit.artifacts import open_runner
from toolkit.bench.load import measure_serving
from toolkit.data import preprocess_images
from toolkit.errors import DlkitError
from toolkit.triton.client import TritonClient
from toolkit.triton.server import TritonServer, free_port

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
    with pytest.raises(DlkitError, match="one server on this machine"):
        TritonClient("grpc://192.0.2.1:8001", shared_memory=True)


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


@pytest.mark.slow
def test_client_retries_survive_a_server_restart(served, triton_timeout):
    """It replaces the session's server with a new one on the same ports."""
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
    starter = threading.Thread(target=served.server.start, args=(triton_timeout,))
    starter.start()
    try:
        np.testing.assert_array_equal(client.infer("tiny", batch), before)
    finally:
        starter.join()
        client.close()
