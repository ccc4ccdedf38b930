"""Pinned host buffers reused between calls (toolkit/pinned.py): how buffers grow and how a
copy is cut into chunks, anywhere; the copies themselves, marked `cuda`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from toolkit.pinned import CHUNK_BYTES, PinnedStaging, chunks, grown, pinned_staging


def test_buffers_grow_to_what_is_needed_and_never_shrink():
    assert grown(0, 10) == 10
    assert grown(10, 4) == 10  # a smaller batch reuses the buffer
    assert grown(10, 10) == 10
    assert grown(10, 11) == 11  # exactly: a 154 MB batch is not pinned twice over
    with pytest.raises(ValueError, match="-1 elements"):
        grown(10, -1)


@pytest.mark.parametrize(
    ("count", "itemsize", "size"), [(10, 4, 8), (10, 4, 40), (7, 2, 6), (1, 4, 2)]
)
def test_chunks_cover_every_element_once_in_order(count, itemsize, size):
    ranges = chunks(count, itemsize, size)
    assert ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(0 < (end - start) * itemsize <= max(size, itemsize) for start, end in ranges)


def test_chunks_of_a_resnet_batch():
    count = 256 * 3 * 224 * 224  # a batch of 256 ResNet inputs: 154 MB of float32
    ranges = chunks(count, 4)
    assert len(ranges) == -(-count * 4 // CHUNK_BYTES)
    assert chunks(0, 4) == []
    assert chunks(3, 4, chunk_bytes=1) == [(0, 1), (1, 2), (2, 3)]  # at least one element


def test_no_staging_on_the_cpu():
    assert pinned_staging(torch.device("cpu")) is None


@pytest.mark.cuda
def test_round_trips_through_reused_pinned_buffers():
    staging = PinnedStaging("cuda", chunk_bytes=1 << 12)  # many chunks for a small batch
    rng = np.random.default_rng(0)
    big = rng.standard_normal((4, 3, 32, 32), dtype=np.float32)
    small = rng.standard_normal((2, 3, 32, 32), dtype=np.float32)
    on_device = staging.to_device(big)
    assert on_device.is_cuda and tuple(on_device.shape) == big.shape
    np.testing.assert_array_equal(on_device.cpu().numpy(), big)
    pinned = staging._host_in
    assert pinned is not None and pinned.is_pinned()
    back = staging.to_host(on_device * 2)
    np.testing.assert_array_equal(back, big * 2)
    readonly = small.copy()
    readonly.flags.writeable = False  # a view of Triton's shared memory is read-only
    np.testing.assert_array_equal(staging.to_device(readonly).cpu().numpy(), small)
    assert staging._host_in is pinned  # the smaller batch reused the buffer
    held = staging.to_host(staging.to_device(big))
    staging.to_host(staging.to_device(small))
    np.testing.assert_array_equal(held, big)  # what was returned is the caller's own
    half = staging.to_host(torch.ones(3, 5, dtype=torch.float16, device="cuda"))
    assert half.dtype == np.float16 and half.shape == (3, 5)
