"""A Triton client that speaks the model's language: image files or arrays in, class names out.

`TritonClient` wraps `tritonclient` (gRPC or HTTP) with what every caller otherwise rewrites:
checks against the model's metadata before sending, batches split at `max_batch_size`, retries
with backoff while the server is unavailable, concurrent requests, system shared memory for a
local server, and the class names and preprocessing that `dlkit package` stores in the config.
`TritonRunner` makes a served model a `Runner`, so `dlkit eval` and `bench` work against it.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from toolkit.artifact import ArtifactInfo
from toolkit.bench.harness import LATENCY_KEYS, latency_stats
from toolkit.errors import DlkitError
from toolkit.runtime import Runner

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_RETRYABLE_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "503", "502", "504")
_regions = itertools.count()


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str, str | None]:
    """`grpc://host:8001/NAME`, `http://host:8000`, `host:port` -> (protocol, host:port, NAME).

    Without a scheme the protocol is `protocol`, else gRPC.
    """
    text = url if "://" in url else f"{protocol or 'grpc'}://{url}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in PROTOCOLS:
        raise DlkitError(f"unknown protocol {scheme!r} in {url}; use grpc:// or http://")
    if protocol and "://" in url and protocol != scheme:
        raise DlkitError(f"{url} says {scheme}, but the protocol asked for is {protocol}")
    if not parts.hostname:
        raise DlkitError(f"no host in {url!r}; expected HOST:PORT, e.g. 127.0.0.1:8001")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise DlkitError(f"bad port in {url!r}") from None
    model = parts.path.strip("/") or None
    return scheme, f"{host}:{port}", model


@dataclass(frozen=True)
class ServedModel:
    """What the client needs to know about a served model, read once from the server."""

    name: str
    input_name: str
    input_datatype: str  # Triton's name: FP32, BYTES, ...
    input_dims: tuple[int, ...]  # without the batch dimension when the model batches
    output_name: str
    output_dims: tuple[int, ...]
    max_batch_size: int
    info: ArtifactInfo | None  # None for models dlkit did not package

    @property
    def takes_images(self) -> bool:
        """True for the preprocessing ensemble: encoded image files in."""
        return self.input_datatype == "BYTES"


class TritonClient:
    """A served model's client. `url` is `[grpc://|http://]host:port`.

    `timeout` bounds each request (seconds); requests that fail because the server is
    unavailable or timed out are retried `retries` times with exponential backoff starting at
    `backoff` seconds. `shared_memory=True` passes tensors through system shared memory (the
    server must run on this machine). Safe to use from several threads.
    """

    def __init__(
        self,
        url: str,
        protocol: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        shared_memory: bool = False,
    ):
        self.protocol, self.address, _ = parse_url(url, protocol)
        self.url = f"{self.protocol}://{self.address}"
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        if shared_memory and urlsplit(self.url).hostname not in LOCAL_HOSTS:
            raise DlkitError(
                f"shared memory needs a server on this machine; {self.address} is not local"
            )
        self.shared_memory = shared_memory
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module = module
        self._local = threading.local()
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        self._regions: list[tuple[Any, Any, str]] = []  # (handle, raw client, name)

    # ------------------------------------------------------------------------- connections

    def _raw(self):
        """This thread's tritonclient (the HTTP one is not thread-safe)."""
        raw = getattr(self._local, "raw", None)
        if raw is None:
            if self.protocol == "grpc":
                raw = self._module.InferenceServerClient(self.address)
            else:
                raw = self._module.InferenceServerClient(
                    self.address, connection_timeout=self.timeout, network_timeout=self.timeout
                )
            self._local.raw = raw
        return raw

    def _reset(self) -> None:
        """Drop this thread's connection, so the next try connects afresh instead of waiting
        out gRPC's reconnect backoff."""
        raw = getattr(self._local, "raw", None)
        self._local.raw = None
        self._local.shm = {}
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.close()

    def _call(self, what: str, fn, *args, model: str | None = None, **kwargs):
        """Run `fn(raw_client, ...)` with retries on unavailable/timeout; errors become
        DlkitError with a message that says what to do."""
        from tritonclient.utils import InferenceServerException

        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn(self._raw(), *args, **kwargs)
            except InferenceServerException as exc:
                status, message = str(exc.status() or ""), exc.message() or str(exc)
                retryable = any(s in status for s in _RETRYABLE_STATUS) or "onnect" in message
                if not retryable:
                    raise self._server_error(what, message, model) from None
                failure = message
            except (OSError, TimeoutError) as exc:  # HTTP: refused, reset, timed out
                failure = f"{type(exc).__name__}: {exc}"
            self._reset()
            if attempt < self.retries:
                time.sleep(delay)
                delay = min(delay * 2, 4.0)
        raise DlkitError(
            f"Triton server at {self.url} is not reachable ({what}: {failure.splitlines()[0]}) "
            f"after {self.retries + 1} tries; start it with `dlkit serve` or check the address"
        )

    def _server_error(self, what: str, message: str, model: str | None) -> DlkitError:
        lowered = message.lower()
        if model and ("unknown model" in lowered or "not found" in lowered):
            return DlkitError(
                f"model {model!r} is not served at {self.url}; it serves "
                f"{self.models() or 'no models'}"
            )
        if model and "is not ready" in lowered:
            return DlkitError(f"model {model!r} at {self.url} is not ready: {message}")
        return DlkitError(f"Triton {what} failed: {message}")

    def close(self) -> None:
        """Unregister shared memory and close this thread's connection."""
        import tritonclient.utils.shared_memory as shm

        with self._lock:
            regions, self._regions = self._regions, []
        for handle, raw, name in regions:
            with contextlib.suppress(Exception):
                raw.unregister_system_shared_memory(name)
            with contextlib.suppress(Exception):
                shm.destroy_shared_memory_region(handle)
        self._reset()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------ server state

    def is_ready(self, model: str | None = None) -> bool:
        """Is the server (or `model`) ready now? Never raises, never retries."""
        try:
            raw = self._raw()
            return bool(raw.is_model_ready(model) if model else raw.is_server_ready())
        except Exception:
            self._reset()
            return False

    def wait_ready(self, model: str | None = None, timeout: float = 60.0) -> None:
        """Block until the server (or `model`) is ready; DlkitError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.is_ready(model):
            if time.monotonic() > deadline:
                what = f"model {model!r} at {self.url}" if model else f"server at {self.url}"
                raise DlkitError(f"Triton {what} not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def models(self) -> list[str]:
        """Names of the models the server has loaded and ready."""
        if self.protocol == "grpc":
            index = self._call(
                "repository index",
                lambda c: c.get_model_repository_index(as_json=True).get("models", []),
            )
        else:
            index = self._call("repository index", lambda c: c.get_model_repository_index())
        return sorted(m["name"] for m in index if m.get("state") == "READY")

    def metadata(self, model: str) -> dict[str, Any]:
        """Triton's model metadata: `{"name", "versions", "inputs", "outputs"}`, shapes as ints."""
        if self.protocol == "grpc":
            meta = self._call(
                "metadata", lambda c: c.get_model_metadata(model, as_json=True), model=model
            )
        else:
            meta = self._call("metadata", lambda c: c.get_model_metadata(model), model=model)
        for tensor in meta.get("inputs", []) + meta.get("outputs", []):
            tensor["shape"] = [int(d) for d in tensor["shape"]]
        return meta

    def config(self, model: str):
        """The model's configuration as Triton's `model_config_pb2.ModelConfig`."""
        from google.protobuf import json_format
        from tritonclient.grpc import model_config_pb2

        if self.protocol == "grpc":
            return self._call("config", lambda c: c.get_model_config(model).config, model=model)
        as_dict = self._call("config", lambda c: c.get_model_config(model), model=model)
        return json_format.ParseDict(
            as_dict, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )

    def model(self, model: str) -> ServedModel:
        """What the client knows about `model` (read once, then cached)."""
        served = self._models.get(model)
        if served is None:
            from toolkit.triton.repository import config_info

            config = self.config(model)
            meta = self.metadata(model)
            if len(meta["inputs"]) != 1 or len(meta["outputs"]) != 1:
                raise DlkitError(
                    f"model {model!r} has several inputs or outputs; dlkit serves "
                    "classifiers with one of each"
                )
            tin, tout = meta["inputs"][0], meta["outputs"][0]
            skip = 1 if config.max_batch_size > 0 else 0
            served = ServedModel(
                name=model,
                input_name=tin["name"],
                input_datatype=tin["datatype"],
                input_dims=tuple(tin["shape"][skip:]),
                output_name=tout["name"],
                output_dims=tuple(tout["shape"][skip:]),
                max_batch_size=config.max_batch_size,
                info=config_info(config),
            )
            self._models[model] = served
        return served

    def info(self, model: str) -> ArtifactInfo:
        """Class names, input shape and preprocessing of a model dlkit packaged."""
        info = self.model(model).info
        if info is None:
            raise DlkitError(
                f"model {model!r} carries no dlkit metadata (class names, preprocessing); "
                "package it with `dlkit package`, or use infer() with tensors"
            )
        return info

    # ---------------------------------------------------------------------------- inference

    def check(self, model: str, batch: np.ndarray) -> ServedModel:
        """Refuse a batch whose shape or dtype the model would reject, before sending it."""
        from tritonclient.utils import np_to_triton_dtype

        served = self.model(model)
        if not isinstance(batch, np.ndarray):
            raise DlkitError(f"model {model!r} takes a numpy array; got {type(batch).__name__}")
        dims = served.input_dims
        batched = served.max_batch_size > 0
        shape = batch.shape[1:] if batched else batch.shape
        want = ("N", *dims) if batched else dims
        if len(shape) != len(dims) or any(
            d not in (-1, s) for d, s in zip(dims, shape, strict=False)
        ):
            raise DlkitError(
                f"model {model!r} expects input {served.input_name} of shape "
                f"({', '.join(map(str, want))}); got {tuple(batch.shape)}"
            )
        sent = "BYTES" if batch.dtype == np.object_ else np_to_triton_dtype(batch.dtype)
        if sent != served.input_datatype:
            raise DlkitError(
                f"model {model!r} expects {served.input_datatype} input; got {batch.dtype}"
                + (" (convert with .astype(np.float32))" if served.input_datatype == "FP32" else "")
            )
        return served

    def infer(self, model: str, batch: np.ndarray) -> np.ndarray:
        """The model's output for `batch` (split into requests of at most max_batch_size)."""
        served = self.check(model, batch)
        if served.max_batch_size <= 0 or len(batch) <= served.max_batch_size:
            return self._infer_once(served, batch)
        step = served.max_batch_size
        return np.concatenate(
            [self._infer_once(served, batch[i : i + step]) for i in range(0, len(batch), step)]
        )

    def infer_many(
        self, model: str, batches: Sequence[np.ndarray], concurrency: int = 8
    ) -> list[np.ndarray]:
        """`infer` on each batch, `concurrency` requests in flight at once; results in order."""
        for batch in batches:
            self.check(model, batch)
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(lambda b: self.infer(model, b), batches))

    def _infer_once(self, served: ServedModel, batch: np.ndarray) -> np.ndarray:
        module = self._module
        if self.shared_memory and not served.takes_images:
            return self._infer_shm(served, batch)
        tensor = module.InferInput(served.input_name, list(batch.shape), served.input_datatype)
        tensor.set_data_from_numpy(batch)
        output = module.InferRequestedOutput(served.output_name)
        result = self._call("inference", self._send, served, [tensor], [output], model=served.name)
        return result.as_numpy(served.output_name)

    def _send(self, raw, served: ServedModel, inputs, outputs):
        if self.protocol == "grpc":
            return raw.infer(served.name, inputs, outputs=outputs, client_timeout=self.timeout)
        return raw.infer(served.name, inputs, outputs=outputs)

    def _infer_shm(self, served: ServedModel, batch: np.ndarray) -> np.ndarray:
        import tritonclient.utils.shared_memory as shm

        out_shape = ((len(batch),) if served.max_batch_size > 0 else ()) + served.output_dims
        out_bytes = int(np.prod(out_shape)) * 4

        def send(raw):
            regions = self._shm_regions(raw, served, max(batch.nbytes, 1), out_bytes)
            (in_handle, in_name), (out_handle, out_name) = regions
            shm.set_shared_memory_region(in_handle, [np.ascontiguousarray(batch)])
            tensor = self._module.InferInput(served.input_name, list(batch.shape), "FP32")
            tensor.set_shared_memory(in_name, batch.nbytes)
            output = self._module.InferRequestedOutput(served.output_name)
            output.set_shared_memory(out_name, out_bytes)
            self._send(raw, served, [tensor], [output])
            return shm.get_contents_as_numpy(out_handle, np.float32, out_shape).copy()

        return self._call("inference", send, model=served.name)

    def _shm_regions(self, raw, served: ServedModel, in_bytes: int, out_bytes: int):
        """This thread's input and output regions for `served`, grown when too small."""
        import tritonclient.utils.shared_memory as shm

        cache = getattr(self._local, "shm", None)
        if cache is None:
            cache = self._local.shm = {}
        have = cache.get(served.name)
        if have and have[0] >= in_bytes and have[1] >= out_bytes:
            return have[2]
        regions = []
        for size in (in_bytes, out_bytes):
            name = f"dlkit_{os.getpid()}_{next(_regions)}"
            handle = shm.create_shared_memory_region(name, f"/{name}", size)
            with self._lock:
                self._regions.append((handle, raw, name))
            raw.register_system_shared_memory(name, f"/{name}", size)
            regions.append((handle, name))
        cache[served.name] = (in_bytes, out_bytes, regions)
        return regions

    # ------------------------------------------------------------------------ classification

    def classify(
        self, model: str, images: Sequence[str | os.PathLike | bytes] | np.ndarray, top_k: int = 3
    ) -> list[list[dict[str, Any]]]:
        """Per image, the `top_k` classes as `{"label", "index", "probability"}` (softmax of
        the logits, as `dlkit predict` reports locally).

        `images` are image files or their bytes, or an already preprocessed float batch. A
        preprocessing ensemble gets the encoded files; any other model gets them preprocessed
        here with the artifact's own transform.
        """
        from toolkit.evaluate import top_k as rank

        info = self.info(model)
        return rank(self.infer(model, self.prepare(model, images)), info.classes, top_k)

    def prepare(
        self, model: str, images: Sequence[str | os.PathLike | bytes] | np.ndarray
    ) -> np.ndarray:
        """The batch `model` takes for `images` (see `classify`)."""
        served = self.model(model)
        if isinstance(images, np.ndarray):
            if served.takes_images:
                raise DlkitError(f"model {model!r} takes encoded image files, not tensors")
            return images
        if served.takes_images:
            return np.array([[_read_bytes(i)] for i in images], dtype=np.object_)
        from toolkit.data import build_transform, load_image

        pre = self.info(model).preprocessing
        transform = build_transform(pre)
        sources = [io.BytesIO(i) if isinstance(i, bytes) else i for i in images]
        return np.stack([transform(load_image(s, pre.channels)).numpy() for s in sources])

    def server_top_k(self, model: str, batch: np.ndarray, k: int = 3) -> list[list[dict]]:
        """Top-k computed by Triton from `labels.txt` (its classification extension): per row
        `{"label", "index", "score"}`, the score being the raw logit."""
        served = self.check(model, batch)
        tensor = self._module.InferInput(
            served.input_name, list(batch.shape), served.input_datatype
        )
        tensor.set_data_from_numpy(batch)
        output = self._module.InferRequestedOutput(served.output_name, class_count=k)
        result = self._call("inference", self._send, served, [tensor], [output], model=model)
        rows = result.as_numpy(served.output_name).reshape(len(batch), -1)
        ranked = []
        for row in rows:
            entries = [v.decode() if isinstance(v, bytes) else str(v) for v in row]
            parts = [e.split(":", 2) for e in entries]
            ranked.append(
                [
                    {"label": p[2] if len(p) > 2 else "", "index": int(p[1]), "score": float(p[0])}
                    for p in parts
                ]
            )
        return ranked


def _read_bytes(image: str | os.PathLike | bytes) -> bytes:
    if isinstance(image, bytes):
        return image
    try:
        with open(image, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DlkitError(f"image not found: {image}") from None


class TritonRunner(Runner):
    """A model served by Triton as a Runner: `open_runner("grpc://host:8001/NAME")`.

    The class names, input shape and preprocessing come from the served config, so evaluation
    and benchmarks need nothing else. `device` is the server's business and is ignored.
    """

    name = "triton"

    def __init__(self, url: str, device: str = "cpu", model: str | None = None, **options):
        protocol, address, named = parse_url(url)
        self.model_name = model or named
        if not self.model_name:
            raise DlkitError(f"no model in {url!r}; use {protocol}://{address}/MODEL_NAME")
        self.client = TritonClient(f"{protocol}://{address}", **options)
        self.info = self.client.info(self.model_name)
        if self.client.model(self.model_name).takes_images:
            raise DlkitError(
                f"{self.model_name} takes encoded image files; open its classifier (the model "
                "without the _ensemble suffix) as a runner"
            )

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.client.infer(self.model_name, batch)


# ----------------------------------------------------------------------------- load testing


def synthetic_batch(served: ServedModel, batch_size: int = 1, seed: int = 0) -> np.ndarray:
    """A batch the model accepts: random normal tensors, or a gray PNG for image models."""
    if served.takes_images:
        from PIL import Image

        size = served.info.preprocessing.image_size if served.info else 32
        buffer = io.BytesIO()
        Image.new("L", (size, size), 128).save(buffer, format="PNG")
        return np.array([[buffer.getvalue()]] * batch_size, dtype=np.object_)
    from tritonclient.utils import triton_to_np_dtype

    dims = tuple(1 if d < 0 else d for d in served.input_dims)
    shape = (batch_size, *dims) if served.max_batch_size > 0 else dims
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(triton_to_np_dtype(served.input_datatype))


def measure_serving(
    url: str,
    model: str,
    concurrency_levels: Sequence[int] = (1, 4, 16),
    duration: float = 5.0,
    batch_size: int = 1,
    warmup: float = 1.0,
    protocol: str | None = None,
    client: TritonClient | None = None,
) -> list[dict[str, Any]]:
    """Closed-loop load test: at each concurrency level, that many threads send requests of
    `batch_size` back to back for `duration` seconds (after `warmup` seconds not counted).

    Returns per level `{"concurrency", "batch_size", "requests", "failures", "throughput"
    (images/s), "latency_ms": {p50, p90, p95, p99, mean, std, min}}`.
    """
    own = client is None
    client = client or TritonClient(url, protocol=protocol, retries=0)
    try:
        served = client.model(model)
        batch = synthetic_batch(served, batch_size)
        client.infer(model, batch)  # fail fast, before any thread starts
        return [
            _measure_level(client, model, batch, c, duration, warmup) for c in concurrency_levels
        ]
    finally:
        if own:
            client.close()


def _measure_level(client, model, batch, concurrency, duration, warmup) -> dict[str, Any]:
    if concurrency < 1:
        raise DlkitError(f"concurrency must be at least 1, got {concurrency}")
    start = time.perf_counter()
    begin, end = start + warmup, start + warmup + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency

    def worker(i: int) -> None:
        while (now := time.perf_counter()) < end:
            try:
                client.infer(model, batch)
            except DlkitError:
                failures[i] += now >= begin
                continue
            if now >= begin:
                latencies[i].append(time.perf_counter() - now)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Requests still running at `end` finish late; count the time they really took.
    elapsed = max(time.perf_counter(), end) - begin
    timings = list(itertools.chain.from_iterable(latencies))
    done = len(timings)
    return {
        "concurrency": concurrency,
        "batch_size": len(batch),
        "requests": done,
        "failures": sum(failures),
        "throughput": done * len(batch) / elapsed,
        "latency_ms": latency_stats(timings)
        if timings
        else dict.fromkeys(LATENCY_KEYS, float("nan")),
    }
