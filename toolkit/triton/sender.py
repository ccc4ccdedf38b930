"""A request encoded once and sent again and again: what a load generator should send.

On the machine that runs the server, every CPU-second the load generator spends is taken from
the server it measures. `TritonClient.infer` checks and encodes each batch anew and goes
through tritonclient's per-call Python, which on a 2-core machine costs the client process
about as much as the RPC itself; a load generator sends the same batch each time, so it can
do that work once. `PreparedRequest` serialises one gRPC ModelInfer request up front and
sends those bytes on a plain gRPC channel (thread-safe: one per load generator), decoding only
whether the answer was an error, as perf_analyzer does.
"""

from __future__ import annotations

import grpc
import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from toolkit.errors import DlkitError
from toolkit.triton.client import ServedModel
from toolkit.triton.endpoints import split_model

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE = 2**31 - 1  # as tritonclient: no message size limit of our own


class PreparedRequest:
    """`batch` for `served` at `address` (host:port, gRPC), encoded once; each call sends it
    and waits for the answer, raising DlkitError on a failure (after `timeout` seconds at
    most)."""

    def __init__(self, address: str, served: ServedModel, batch: np.ndarray, timeout: float):
        name, version = split_model(served.name)
        request = service_pb2.ModelInferRequest(model_name=name, model_version=version)
        request.inputs.add(
            name=served.input_name, datatype=served.input_datatype, shape=list(batch.shape)
        )
        request.outputs.add(name=served.output_name)
        if served.takes_images:
            content = serialize_byte_tensor(batch).tobytes()
        else:
            content = np.ascontiguousarray(batch).tobytes()
        request.raw_input_contents.append(content)
        self.payload = request.SerializeToString()
        self.timeout = timeout
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ]
        self.channel = grpc.insecure_channel(address, options=options)
        self.call = self.channel.unary_unary(MODEL_INFER)

    def __call__(self) -> None:
        try:
            self.call(self.payload, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise DlkitError(f"Triton inference failed: {exc.code()}: {exc.details()}") from None

    def close(self) -> None:
        self.channel.close()
