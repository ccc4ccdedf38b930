"""Host-device copies through page-locked (pinned) host buffers kept between calls.

A numpy batch is pageable memory: `torch.from_numpy(batch).to("cuda")` makes the driver stage it
through a small pinned buffer of its own, one piece at a time, at a fraction of the bus speed
(measured on an H200: ResNet-18 batch 256 spent 85% of its end-to-end time copying). Here the
batch is copied into a pinned buffer of ours, in chunks, each chunk's transfer to the GPU
started as soon as it is in place, so the host copy of one chunk overlaps the DMA of the last;
the device buffer and both pinned buffers are kept and grown to the largest batch seen, so a
steady stream of batches allocates nothing.

The pure parts (how buffers grow, how a copy is cut into chunks) need no GPU; `PinnedStaging`
itself needs CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

# Big enough that each DMA runs near the bus speed, small enough that the first transfer starts
# soon: at ~10 GB/s of host memcpy, 8 MiB is under a millisecond.
CHUNK_BYTES = 8 << 20


def grown(capacity: int, needed: int) -> int:
    """The element count a buffer of `capacity` elements is reallocated to for `needed`:
    unchanged when it fits, else exactly `needed` (a batch of 256 ResNet inputs is 154 MB;
    doubling would pin twice that)."""
    if needed < 0:
        raise ValueError(f"a buffer cannot hold {needed} elements")
    return capacity if needed <= capacity else needed


def chunks(count: int, itemsize: int, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """[start, end) element ranges that cover `count` elements of `itemsize` bytes in pieces of
    about `chunk_bytes` (at least one element each)."""
    if count <= 0:
        return []
    step = max(1, chunk_bytes // max(1, itemsize))
    return [(start, min(start + step, count)) for start in range(0, count, step)]


class PinnedStaging:
    """Pinned input and output buffers and a device input buffer for one CUDA device, reused
    between calls. `to_device` returns a view of the device buffer: it is overwritten by the
    next `to_device`, so use it before calling again (a runner does: one call at a time)."""

    def __init__(self, device: torch.device | str, chunk_bytes: int = CHUNK_BYTES):
        import torch

        self.device = torch.device(device)
        self.chunk_bytes = chunk_bytes
        self._host_in: torch.Tensor | None = None
        self._device_in: torch.Tensor | None = None
        self._host_out: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None  # the last input transfer's end

    def _buffer(self, current, count: int, dtype, pinned: bool) -> torch.Tensor:
        import torch

        held = current.numel() if current is not None and current.dtype == dtype else 0
        size = grown(held, count)
        if current is not None and size == held:
            return current
        if pinned:
            return torch.empty(size, dtype=dtype, pin_memory=True)
        return torch.empty(size, dtype=dtype, device=self.device)

    def to_device(self, batch: np.ndarray) -> torch.Tensor:
        """`batch` on the device (same dtype and shape), copied through the pinned buffer in
        chunks whose transfers overlap the host copies of the next ones."""
        import numpy as np
        import torch

        dtype = torch.from_numpy(np.empty(0, batch.dtype)).dtype
        if self._copied is not None:
            self._copied.synchronize()  # the pinned buffer is still being read by the last DMA
        self._host_in = self._buffer(self._host_in, batch.size, dtype, pinned=True)
        self._device_in = self._buffer(self._device_in, batch.size, dtype, pinned=False)
        flat = np.ascontiguousarray(batch).reshape(-1)
        host = self._host_in.numpy()
        with torch.cuda.device(self.device):
            for start, end in chunks(batch.size, batch.itemsize, self.chunk_bytes):
                np.copyto(host[start:end], flat[start:end])
                self._device_in[start:end].copy_(self._host_in[start:end], non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        return self._device_in[: batch.size].view(batch.shape)

    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        """A device tensor as a new numpy array, copied through the pinned output buffer (the
        call waits for the copy, and so for the work that made `tensor`)."""
        import torch

        count = tensor.numel()
        self._host_out = self._buffer(self._host_out, count, tensor.dtype, pinned=True)
        out = self._host_out[:count]
        out.copy_(tensor.reshape(-1), non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return out.numpy().reshape(tuple(tensor.shape)).copy()


def pinned_staging(device: torch.device) -> PinnedStaging | None:
    """Staging for a runner on `device`: pinned buffers on CUDA, None on the CPU (a numpy
    batch is used there as it is)."""
    return PinnedStaging(device) if device.type == "cuda" else None
