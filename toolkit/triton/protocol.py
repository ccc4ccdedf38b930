"""One interface over tritonclient's gRPC and HTTP clients, every call with a deadline.

`open_transport(protocol, address, timeout)` returns a Transport whose methods answer in one
shape whatever the protocol (metadata and indexes as dicts, configs as `ModelConfig`), and
`retryable(exc)` says from the error's type and status code, never its text, whether trying
again (or elsewhere) can help.
"""

from __future__ import annotations

import http.client
from typing import Any

import gevent
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from toolkit.choices import Protocol
from toolkit.errors import DlkitError
from toolkit.triton.endpoints import split_model

# Status codes that mean "the server is not there (yet), or did not answer in time".
RETRYABLE_STATUS = frozenset(
    {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "502", "503", "504"}
)
DEADLINE_STATUS = frozenset({"StatusCode.DEADLINE_EXCEEDED", "504"})


def retryable(exc: BaseException) -> bool:
    """True for failures of the connection or the server's availability: refused, reset,
    timed out, unavailable. False for answers the server meant (unknown model, bad input)."""
    if isinstance(exc, InferenceServerException):
        return str(exc.status() or "") in RETRYABLE_STATUS
    return isinstance(exc, (OSError, TimeoutError, http.client.HTTPException))


def timed_out(exc: BaseException) -> bool:
    if isinstance(exc, InferenceServerException):
        return str(exc.status() or "") in DEADLINE_STATUS
    return isinstance(exc, TimeoutError)


class Malformed(ValueError):
    """The peer answered, but not in Triton's protocol (garbage, or JSON of another shape)."""


def expect(value: Any, kind: type, what: str) -> Any:
    """`value` if it is a `kind`, else Malformed naming `what`."""
    if not isinstance(value, kind):
        raise Malformed(f"{what} is {type(value).__name__}, not {kind.__name__}")
    return value


def checked_metadata(meta: Any) -> dict[str, Any]:
    """Triton's model metadata with every field dlkit reads checked: "inputs" and "outputs"
    lists of tensors, each with a text "name" and "datatype" and whole-number "shape"."""
    meta = expect(meta, dict, "the model metadata")
    for key in ("inputs", "outputs"):
        for tensor in expect(meta.get(key), list, f"metadata {key}"):
            tensor = expect(tensor, dict, f"a tensor of metadata {key}")
            expect(tensor.get("name"), str, f"a tensor name of metadata {key}")
            expect(tensor.get("datatype"), str, f"a tensor datatype of metadata {key}")
            try:
                tensor["shape"] = [int(d) for d in expect(tensor.get("shape"), list, "a shape")]
            except (TypeError, ValueError):
                raise Malformed(f"a tensor shape of metadata {key} is not whole numbers") from None
    return meta


def named_config(config, model: str):
    """A config that is `model`'s (`NAME` or `NAME/VERSION`: one config serves every version;
    an answer of another shape parses as an empty one)."""
    name = split_model(model)[0]
    if config.name != name:
        raise Malformed(f"the config answered names {config.name!r}, not {name!r}")
    return config


def checked_rows(answer: Any, rows: int, batched: bool, output: str) -> Any:
    """An inference answer: an array, with one row per input row when the model batches."""
    if not hasattr(answer, "shape"):
        raise Malformed(f"no output {output!r} in the answer")
    if batched and (len(answer.shape) == 0 or answer.shape[0] != rows):
        raise Malformed(f"{answer.shape} answered for a batch of {rows}")
    return answer


def not_triton(url: str, what: str, exc: Exception) -> DlkitError:
    """The error for a peer that answered with what is not Triton's protocol (invalid JSON,
    JSON of another shape), or with an answer dlkit could not read."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return DlkitError(
        f"{url} answered {what} with what is not Triton's protocol ({type(exc).__name__}: "
        f"{text}); check that the address is a Triton server"
    )


def error_text(exc: BaseException) -> str:
    if isinstance(exc, InferenceServerException):
        return (exc.message() or str(exc)).strip()
    return f"{type(exc).__name__}: {exc}"


class Transport:
    """A connection to one server. Not thread-safe (HTTP); use one per thread."""

    protocol: Protocol

    def __init__(self, module: Any, raw: Any, timeout: float):
        self.module, self.raw, self.timeout = module, raw, timeout

    def close(self) -> None:
        self.raw.close()

    def server_ready(self) -> bool:
        return bool(self._call("is_server_ready"))

    def model_ready(self, model: str) -> bool:
        return bool(self._call("is_model_ready", *split_model(model)))

    def repository_index(self) -> list[dict[str, Any]]:
        index = expect(self._repository_index(), list, "the repository index")
        for entry in index:
            expect(expect(entry, dict, "a repository index entry").get("name"), str, "a name")
        return index

    def metadata(self, model: str) -> dict[str, Any]:
        return checked_metadata(self._metadata(model))

    def config(self, model: str):
        raise NotImplementedError

    def statistics(self, model: str) -> dict[str, Any]:
        return expect(self._statistics(model), dict, "the statistics")

    def _repository_index(self) -> Any:
        raise NotImplementedError

    def _metadata(self, model: str) -> Any:
        raise NotImplementedError

    def _statistics(self, model: str) -> Any:
        raise NotImplementedError

    def load_model(self, model: str, config_json: str | None = None) -> None:
        self._call("load_model", _whole(model), config=config_json)

    def unload_model(self, model: str) -> None:
        self._call("unload_model", _whole(model))

    def infer(self, model: str, inputs: list, outputs: list):
        name, version = split_model(model)
        return self._call("infer", name, inputs, model_version=version, outputs=outputs)

    def register_shm(self, name: str, key: str, size: int) -> None:
        self._call("register_system_shared_memory", name, key, size)

    def unregister_shm(self, name: str) -> None:
        self._call("unregister_system_shared_memory", name)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.raw, method)(*args, **kwargs)


class GrpcTransport(Transport):
    """gRPC: every call carries `client_timeout`, so a peer that accepts the connection and
    never answers ends in DEADLINE_EXCEEDED instead of a hang."""

    protocol = Protocol.GRPC

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.raw, method)(*args, client_timeout=self.timeout, **kwargs)

    def _repository_index(self) -> Any:
        return self._call("get_model_repository_index", as_json=True).get("models", [])

    def _metadata(self, model: str) -> Any:
        return self._call("get_model_metadata", *split_model(model), as_json=True)

    def config(self, model: str):
        return self._call("get_model_config", *split_model(model)).config

    def _statistics(self, model: str) -> Any:
        return self._call("get_inference_statistics", *split_model(model), as_json=True)


class HttpTransport(Transport):
    """HTTP: the connection and network timeouts bound each socket operation, and a gevent
    timeout bounds the whole call, so a peer that sends its answer a byte at a time cannot
    hold it past `timeout` either."""

    protocol = Protocol.HTTP

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        late = TimeoutError(f"no complete answer within {self.timeout:g} s")
        with gevent.Timeout(self.timeout, late):
            return getattr(self.raw, method)(*args, **kwargs)

    def _repository_index(self) -> Any:
        return self._call("get_model_repository_index")

    def _metadata(self, model: str) -> Any:
        return self._call("get_model_metadata", *split_model(model))

    def config(self, model: str):
        as_dict = expect(
            self._call("get_model_config", *split_model(model)), dict, "the model config"
        )
        try:
            return json_format.ParseDict(
                as_dict, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
            )
        except json_format.ParseError as exc:
            raise Malformed(f"the model config does not parse ({exc})") from None

    def _statistics(self, model: str) -> Any:
        return self._call("get_inference_statistics", *split_model(model))


def _whole(model: str) -> str:
    """A model loaded or unloaded as a whole: the repository API takes no version."""
    name, version = split_model(model)
    if version:
        raise DlkitError(f"{model}: Triton loads and unloads a model with all its versions")
    return name


def open_transport(protocol: str, address: str, timeout: float) -> Transport:
    """A new connection to the server at `address` ("host:port")."""
    if Protocol(protocol) == Protocol.GRPC:
        return GrpcTransport(grpcclient, grpcclient.InferenceServerClient(address), timeout)
    raw = httpclient.InferenceServerClient(
        address, connection_timeout=timeout, network_timeout=timeout
    )
    return HttpTransport(httpclient, raw, timeout)
