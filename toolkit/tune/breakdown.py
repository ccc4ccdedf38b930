"""Where the time of one served request goes, at concurrency 1.

The client's own work is timed directly (its checks and building the request tensors); the
server's phases come from Triton's statistics over the same requests; what remains of the
round trip is the transport: the RPC stack on both sides, the loopback, the server's frontend
before and after it starts timing a request, and decoding the answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from toolkit.triton.client import TritonClient
from toolkit.triton.statistics import ServerTimes, snapshot


@dataclass(frozen=True)
class Breakdown:
    """Means per request, in microseconds, over `requests` sequential requests."""

    requests: int
    round_trip_us: float
    encode_us: float
    server: ServerTimes

    @property
    def transport_us(self) -> float:
        return max(0.0, self.round_trip_us - self.encode_us - self.server.total_us)

    def parts(self) -> list[tuple[str, float]]:
        """(part, microseconds) in the order a request meets them; they sum to the round trip
        (the server's time outside its four phases is its scheduling and frontend work)."""
        s = self.server
        inside = s.queue_us + s.compute_input_us + s.compute_infer_us + s.compute_output_us
        return [
            ("client encode (checks, request tensors)", self.encode_us),
            ("transport (RPC both ways, loopback, decode)", self.transport_us),
            ("Triton queue", s.queue_us),
            ("compute input", s.compute_input_us),
            ("compute infer (model, with the python stub's hand-over)", s.compute_infer_us),
            ("compute output", s.compute_output_us),
            ("Triton other (scheduling, response)", max(0.0, s.total_us - inside)),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "round_trip_us": self.round_trip_us,
            "encode_us": self.encode_us,
            "transport_us": self.transport_us,
            "server": self.server.to_dict(),
            "parts_us": dict(self.parts()),
        }


def request_breakdown(
    client: TritonClient, model: str, batch: np.ndarray, seconds: float = 2.0
) -> Breakdown:
    """Send `batch` one request at a time for about `seconds` and split the mean round trip
    into its parts."""
    client.infer(model, batch)  # connected, model metadata read
    before = snapshot(client.statistics(model), model)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        start = time.perf_counter()
        client.infer(model, batch)
        times.append(time.perf_counter() - start)
    server = ServerTimes.between(before, snapshot(client.statistics(model), model))
    return Breakdown(
        requests=len(times),
        round_trip_us=float(np.mean(times)) * 1e6,
        encode_us=encode_us(client, model, batch),
        server=server,
    )


def encode_us(client: TritonClient, model: str, batch: np.ndarray, repeats: int = 300) -> float:
    """Mean time of what the client does before sending: its checks against the model, and
    the request's tensors with the data in them."""
    served = client.model(model)

    def encode() -> None:
        client.check(model, batch)
        tensor = grpcclient.InferInput(served.input_name, list(batch.shape), served.input_datatype)
        tensor.set_data_from_numpy(batch)
        grpcclient.InferRequestedOutput(served.output_name)

    encode()
    start = time.perf_counter()
    for _ in range(repeats):
        encode()
    return (time.perf_counter() - start) / repeats * 1e6
