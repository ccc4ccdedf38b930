"""A Triton client that speaks the model's language: image files or arrays in, class names out.

`TritonClient` wraps tritonclient (through `toolkit.triton.protocol`, gRPC or HTTP) with what
every caller otherwise rewrites: checks against the model's metadata before sending, batches
split at `max_batch_size`, a deadline on every call, retries decided by the error's status,
requests spread over several endpoints (a failing one is taken out and retried later),
concurrent requests, system shared memory for a local server, and the class names and
preprocessing that `dlkit package` stores in the config.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from toolkit.artifacts.metadata import ArtifactInfo
from toolkit.data import encoded_images, preprocess_images
from toolkit.errors import DlkitError
from toolkit.evaluate import top_k as rank
from toolkit.triton.configs import config_info
from toolkit.triton.endpoints import EndpointPool, parse_urls, split_model
from toolkit.triton.protocol import (
    Transport,
    checked_rows,
    error_text,
    named_config,
    not_triton,
    open_transport,
    retryable,
    timed_out,
)
from toolkit.triton.served import ImagesFailed, RequestRefused, ServedModel
from toolkit.triton.shm import SharedMemory
from toolkit.triton.versions import served_text, version_info


class TritonClient:
    """A served model's client. `url` is `[grpc://|http://]host:port`, or several of them
    (a list, or comma-separated) serving the same models.

    `timeout` bounds every call (seconds); calls that fail because a server is unavailable or
    timed out are retried on the next healthy endpoint, then `retries` more times with
    exponential backoff from `backoff` seconds. `shared_memory=True` passes tensors through
    system shared memory (one server, on this machine). Safe to use from several threads.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        protocol: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        shared_memory: bool = False,
        cooldown: float = 5.0,
    ):
        endpoints = parse_urls(url, protocol)
        self.pool = EndpointPool(endpoints, cooldown)
        self.url = ",".join(e.url for e in endpoints)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        if shared_memory and (len(endpoints) > 1 or not endpoints[0].local):
            raise DlkitError(f"shared memory needs one server on this machine; not {self.url}")
        self.shm = SharedMemory() if shared_memory else None
        self._local = threading.local()
        self._models: dict[str, ServedModel] = {}

    @property
    def endpoints(self):
        return self.pool.endpoints

    # ------------------------------------------------------------------------- connections

    def _transport(self, index: int) -> Transport:
        """This thread's connection to endpoint `index` (HTTP clients are not thread-safe)."""
        transports = self._local.__dict__.setdefault("transports", {})
        if index not in transports:
            endpoint = self.pool.endpoints[index]
            transports[index] = open_transport(endpoint.protocol, endpoint.address, self.timeout)
        return transports[index]

    def _reset(self, index: int) -> None:
        """Drop this thread's connection to an endpoint, so the next try connects afresh
        instead of waiting out gRPC's reconnect backoff."""
        transport = self._local.__dict__.setdefault("transports", {}).pop(index, None)
        if self.shm is not None:
            self.shm.forget(index)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()

    def _call(self, what: str, fn: Callable[[Transport], Any], model: str | None = None) -> Any:
        """`fn(transport)` on a healthy endpoint, moving on when one fails; errors become
        DlkitError with a message that says what to do.

        One deadline, `timeout` s, bounds the call, retries and backoff included (gRPC gives up
        on a peer that accepts and never speaks after ~20 s with a retryable status: per-try
        deadlines added up). An endpoint that let it pass is not asked again; quick failures
        (refused, reset, unavailable) are retried with backoff."""
        deadline = time.monotonic() + self.timeout
        count = len(self.pool.endpoints)
        tried: set[int] = set()
        silent: set[int] = set()
        delay, failure = self.backoff, ""
        attempts = count + self.retries
        for attempt in range(attempts):
            index = self.pool.pick(tried | silent)
            try:
                transport = self._transport(index)
                transport.timeout = max(deadline - time.monotonic(), 0.001)
                result = fn(transport)
            except DlkitError:
                raise
            except Exception as exc:
                if not retryable(exc):
                    if isinstance(exc, InferenceServerException):
                        raise self._server_error(what, exc, model) from None
                    raise not_triton(self.pool.endpoints[index].url, what, exc) from None
                failure = f"{self.pool.endpoints[index].address}: {error_text(exc)}"
                self.pool.failed(index)
                self._reset(index)
                tried.add(index)
                if timed_out(exc):
                    silent.add(index)
                if len(silent) == count or time.monotonic() >= deadline:
                    break
                if len(tried) >= count and attempt < attempts - 1:
                    tried.clear()
                    time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                    delay = min(delay * 2, 4.0)
                continue
            self.pool.succeeded(index)
            return result
        if len(silent) == count or time.monotonic() >= deadline:
            raise DlkitError(
                f"Triton server at {self.url} did not answer within {self.timeout:g} s "
                f"({what}); it may be overloaded, or not a Triton server: check the address, "
                "or allow more time (timeout)"
            )
        raise DlkitError(
            f"Triton server at {self.url} is not reachable ({what}: "
            f"{failure.splitlines()[0] if failure else 'no answer'}) after {attempts} tries; "
            "start it with `dlkit serve` or check the address"
        )

    def _server_error(self, what: str, exc: InferenceServerException, model: str | None):
        message = error_text(exc)
        status = str(exc.status() or "")
        if model and ("NOT_FOUND" in status or "unknown model" in message.lower()):
            return DlkitError(
                f"model {model!r} is not served at {self.url}; it serves "
                f"{served_text(self.served_versions()) or 'no models'} (one version of a "
                "model: MODEL/VERSION)"
            )
        return RequestRefused(f"Triton {what} failed: {message.splitlines()[0][:500]}")

    def close(self) -> None:
        """Unregister shared memory and close this thread's connections."""
        if self.shm is not None:
            self.shm.close()
        for index in list(self._local.__dict__.get("transports", {})):
            self._reset(index)

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------ server state

    def is_ready(self, model: str | None = None, timeout: float | None = None) -> bool:
        """Is a server (or `model` on it) ready now? Never raises, never retries; waits at
        most `timeout` seconds (default: the client's)."""
        index = self.pool.pick()
        try:
            transport = self._transport(index)
            transport.timeout = min(self.timeout, timeout or self.timeout)
            return transport.model_ready(model) if model else transport.server_ready()
        except Exception:
            self._reset(index)
            return False

    def wait_ready(self, model: str | None = None, timeout: float = 60.0) -> None:
        """Block until a server (or `model`) is ready; DlkitError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.is_ready(model, max(deadline - time.monotonic(), 0.001)):
            if time.monotonic() > deadline:
                what = f"model {model!r} at {self.url}" if model else f"server at {self.url}"
                raise DlkitError(f"Triton {what} not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model the server knows, with its state (READY, UNAVAILABLE, ...)."""
        return self._call("repository index", lambda t: t.repository_index())

    def models(self) -> list[str]:
        """Names of the models the server has loaded and ready (each once, whatever its
        versions)."""
        return sorted(self.served_versions())

    def served_versions(self) -> dict[str, list[int]]:
        """The ready versions of each model the server has loaded, by name."""
        ready: dict[str, list[int]] = {}
        for entry in self.repository_index():
            if entry.get("state") == "READY":
                versions = ready.setdefault(entry["name"], [])
                if str(entry.get("version", "")).isdigit():
                    versions.append(int(entry["version"]))
        return {name: sorted(ready[name]) for name in sorted(ready)}

    def metadata(self, model: str) -> dict[str, Any]:
        """Triton's model metadata: `{"name", "versions", "inputs", "outputs"}`, shapes as ints."""
        return self._call("metadata", lambda t: t.metadata(model), model=model)

    def config(self, model: str):
        """The model's configuration as Triton's `model_config_pb2.ModelConfig`."""
        return self._call("config", lambda t: named_config(t.config(model), model), model=model)

    def statistics(self, model: str) -> dict[str, Any]:
        """Triton's inference statistics for `model` (its statistics extension)."""
        return self._call("statistics", lambda t: t.statistics(model), model=model)

    def load_model(self, model: str, config_json: str | None = None) -> None:
        """Load (or reload) `model` through the repository API (explicit model control),
        with `config_json` (see `configs.config_json`) overriding its config.pbtxt."""
        self._call("model load", lambda t: t.load_model(model, config_json))
        self._models.pop(model, None)

    def unload_model(self, model: str) -> None:
        """Unload `model` (explicit model control)."""
        self._call("model unload", lambda t: t.unload_model(model))
        self._models.pop(model, None)

    def model(self, model: str) -> ServedModel:
        """What the client knows about `model` (read once, then cached)."""
        served = self._models.get(model)
        if served is None:
            config, meta = self.config(model), self.metadata(model)
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
                info=version_info(config, split_model(model)[1]) or config_info(config),
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
        """Refuse a batch the model would reject (or answer with nonsense), before sending."""
        served = self.model(model)
        if not isinstance(batch, np.ndarray):
            raise DlkitError(f"model {model!r} takes a numpy array; got {type(batch).__name__}")
        batched = served.max_batch_size > 0
        if batched and len(batch) == 0:
            raise DlkitError(f"model {model!r} got an empty batch; send at least one image")
        dims, shape = served.input_dims, batch.shape[1:] if batched else batch.shape
        if len(shape) != len(dims) or any(
            d not in (-1, s) for d, s in zip(dims, shape, strict=False)
        ):
            want = ("N", *dims) if batched else dims
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
        # One reduction instead of an element-wise test: NaN and ±inf survive a sum.
        if np.issubdtype(batch.dtype, np.floating) and not np.isfinite(batch.sum(dtype=np.float64)):
            raise DlkitError(f"model {model!r} got NaN or infinite values; check the preprocessing")
        return served

    def infer(self, model: str, batch: np.ndarray) -> np.ndarray:
        """The model's output for `batch` (split into requests of at most max_batch_size)."""
        served = self.check(model, batch)
        step = served.max_batch_size
        if step <= 0 or len(batch) <= step:
            return self._infer_once(served, batch)
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

    def _request(self, served: ServedModel, transport: Transport, batch: np.ndarray, **output):
        tensor = transport.module.InferInput(
            served.input_name, list(batch.shape), served.input_datatype
        )
        tensor.set_data_from_numpy(batch)
        requested = transport.module.InferRequestedOutput(served.output_name, **output)
        answer = transport.infer(served.name, [tensor], [requested]).as_numpy(served.output_name)
        return checked_rows(answer, len(batch), served.max_batch_size > 0, served.output_name)

    def _infer_once(self, served: ServedModel, batch: np.ndarray) -> np.ndarray:
        if self.shm is None or served.takes_images:
            return self._call("inference", lambda t: self._request(served, t, batch), served.name)
        out_shape = ((len(batch),) if served.max_batch_size > 0 else ()) + served.output_dims
        tensors = (served.input_name, served.output_name)
        return self._call(
            "inference",
            lambda t: self.shm.infer(t, 0, served.name, tensors, batch, out_shape),
            served.name,
        )

    # ------------------------------------------------------------------------ classification

    def classify(
        self, model: str, images: Sequence[str | os.PathLike | bytes] | np.ndarray, top_k: int = 3
    ) -> list[list[dict[str, Any]]]:
        """Per image, the `top_k` classes as `{"label", "index", "probability"}` (softmax of
        the logits, as `dlkit predict` reports locally).

        `images` are image files or their bytes, or an already preprocessed float batch. A
        preprocessing ensemble gets the encoded files; any other model gets them preprocessed
        here with the artifact's own transform. When an image cannot be read, or the server
        refuses it, the images are sent one by one and `ImagesFailed` names each that failed,
        with the answers for the others.
        """
        classes = self.info(model).classes
        if isinstance(images, np.ndarray):
            return rank(self.infer(model, self.prepare(model, images)), classes, top_k)
        try:
            batch = self.prepare(model, images)
        except DlkitError:
            return self._classify_each(model, images, top_k)
        try:
            return rank(self.infer(model, batch), classes, top_k)
        except RequestRefused:
            if not self.model(model).takes_images:
                raise  # the server refused tensors dlkit made: not one image's fault
            return self._classify_each(model, images, top_k)

    def _classify_each(self, model: str, images, top_k: int) -> list[list[dict[str, Any]]]:
        """`classify`, one image per request, naming each image that cannot be read or that
        the server refuses; a server that is gone still ends the call at once."""
        classes = self.info(model).classes
        failed: dict[int, str] = {}
        results: list[list[dict[str, Any]] | None] = []
        for index, image in enumerate(images):
            results.append(None)
            try:
                batch = self.prepare(model, [image])
            except DlkitError as exc:
                failed[index] = str(exc)
                continue
            try:
                results[index] = rank(self.infer(model, batch), classes, top_k)[0]
            except RequestRefused as exc:
                name = f"image {index}" if isinstance(image, bytes) else str(image)
                failed[index] = f"{name}: {exc}"
        if failed:
            raise ImagesFailed(failed, results)
        return results

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
            return encoded_images(images)
        return preprocess_images(images, self.info(model).preprocessing)

    def server_top_k(self, model: str, batch: np.ndarray, k: int = 3) -> list[list[dict]]:
        """Top-k computed by Triton from `labels.txt` (its classification extension): per row
        `{"label", "index", "score"}`, the score being the raw logit."""
        served = self.check(model, batch)
        rows = self._call(
            "inference", lambda t: self._request(served, t, batch, class_count=k), model=model
        ).reshape(len(batch), -1)
        ranked = []
        for row in rows:
            parts = [(v.decode() if isinstance(v, bytes) else str(v)).split(":", 2) for v in row]
            ranked.append(
                [
                    {"label": p[2] if len(p) > 2 else "", "index": int(p[1]), "score": float(p[0])}
                    for p in parts
                ]
            )
        return ranked
