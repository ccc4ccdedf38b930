"""System shared memory between a client and a server on one machine: tensors go through
regions both processes map instead of over the socket (`TritonClient(shared_memory=True)`)."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from typing import Any

import numpy as np
import tritonclient.utils.shared_memory as shm

from toolkit.triton.protocol import Transport

_names = itertools.count()


class SharedMemory:
    """A client's regions: per thread and endpoint, an input and an output region per model,
    grown when too small. Safe to use from several threads; `close` releases them all."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._regions: list[tuple[Any, Transport, str]] = []  # (handle, transport, name)

    def infer(
        self,
        transport: Transport,
        endpoint: int,
        model: str,
        tensors: tuple[str, str],
        batch: np.ndarray,
        out_shape: tuple[int, ...],
    ) -> np.ndarray:
        """Run `model` on `batch` (float32) through this thread's regions for `endpoint`;
        `tensors` names the input and the output, whose shape is `out_shape`."""
        out_bytes = int(np.prod(out_shape)) * 4
        regions = self._regions_for(transport, endpoint, model, max(batch.nbytes, 1), out_bytes)
        (in_handle, in_name), (out_handle, out_name) = regions
        shm.set_shared_memory_region(in_handle, [np.ascontiguousarray(batch)])
        tensor = transport.module.InferInput(tensors[0], list(batch.shape), "FP32")
        tensor.set_shared_memory(in_name, batch.nbytes)
        output = transport.module.InferRequestedOutput(tensors[1])
        output.set_shared_memory(out_name, out_bytes)
        transport.infer(model, [tensor], [output])
        return shm.get_contents_as_numpy(out_handle, np.float32, out_shape).copy()

    def _regions_for(self, transport: Transport, endpoint: int, model: str, in_bytes, out_bytes):
        cache = self._local.__dict__.setdefault("cache", {}).setdefault(endpoint, {})
        have = cache.get(model)
        if have and have[0] >= in_bytes and have[1] >= out_bytes:
            return have[2]
        regions = []
        for size in (in_bytes, out_bytes):
            name = f"dlkit_{os.getpid()}_{next(_names)}"
            handle = shm.create_shared_memory_region(name, f"/{name}", size)
            with self._lock:
                self._regions.append((handle, transport, name))
            transport.register_shm(name, f"/{name}", size)
            regions.append((handle, name))
        cache[model] = (in_bytes, out_bytes, regions)
        return regions

    def forget(self, endpoint: int) -> None:
        """This thread registers anew with `endpoint` next time (its connection was reset,
        and the server may have restarted without our registrations)."""
        self._local.__dict__.setdefault("cache", {}).pop(endpoint, None)

    def close(self) -> None:
        """Unregister and destroy every region."""
        with self._lock:
            regions, self._regions = self._regions, []
        for handle, transport, name in regions:
            with contextlib.suppress(Exception):
                transport.unregister_shm(name)
            with contextlib.suppress(Exception):
                shm.destroy_shared_memory_region(handle)
