"""Training and validation loaders: shuffling and sharding across processes, and augmentation
drawn from (seed, epoch, sample) alone, so the number of loader workers never changes a run.

Left to itself, a DataLoader augments in the main process from the global torch generator
(which dropout also draws from) with `--workers 0`, and from one generator per worker process
otherwise: the same seed would give other weights for every worker count.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from toolkit.errors import DlkitError


def derived_seed(seed: int, *words: int) -> int:
    """A seed for one purpose (one sample's augmentation in one epoch: `seed, epoch, index`),
    well mixed, from the run's seed and non-negative integers."""
    entropy = [seed & 0xFFFFFFFFFFFFFFFF, *words]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


class SeededSampler(Sampler):
    """Yields `(index, seed)`: the indices of `sampler` (call `set_epoch` every epoch) with the
    seed `SeededDataset` augments that sample from."""

    def __init__(self, sampler: DistributedSampler, seed: int):
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.sampler:
            yield index, derived_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededDataset(Dataset):
    """Reads `dataset[index]` for a key `(index, seed)` with the CPU generator seeded by `seed`,
    restoring the generator afterwards (in the main process it also drives dropout)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


def create_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool = False,
    seed: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader whose order and augmentation depend only on (seed, epoch): call
    `loader.sampler.set_epoch(epoch)` each epoch. Training loaders shard across `world_size`
    processes and drop the last incomplete batch; evaluation loaders keep every sample."""
    if batch_size < 1:
        raise DlkitError(f"batch size must be at least 1, got {batch_size}")
    if train:
        shuffled = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        sampler = SeededSampler(shuffled, seed)
        drop_last = len(dataset) // world_size >= batch_size
        dataset = SeededDataset(dataset)
    else:
        # Each rank evaluates a disjoint shard (no padding duplicates); metrics are summed.
        sampler = list(range(rank, len(dataset), world_size))
        drop_last = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        # Its own generator: worker seeds are then not drawn from the global one, which
        # would make dropout depend on how often loaders start workers.
        generator=torch.Generator().manual_seed(seed),
    )
