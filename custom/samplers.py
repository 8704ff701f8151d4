"""Endless, seeded, resumable sampling for iteration-based training.

Every sample a training run draws is a pure function of ``(seed, rank, position)``: which case (a permutation per
pass over the data, sharded disjointly over ranks) and the seed of its random augmentation. A run resumed at
iteration ``i`` therefore draws exactly the samples the uninterrupted run would have drawn, without replaying or
caching anything.

    sampler = InfiniteSeededSampler(len(dataset), seed=1337)
    loader = monai.data.DataLoader(SeededDataset(dataset), batch_size=2, sampler=sampler)
    sampler.set_start(iteration * 2)   # done by MeanTeacherTrainer when it (re)starts
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["InfiniteSeededSampler", "SeededDataset"]


class InfiniteSeededSampler(Sampler):
    """Yields ``(index, sample_seed)`` forever.

    Pass ``k`` over the data is a permutation drawn from ``seed`` and ``k`` (or ``range(n)`` if not shuffled);
    rank ``r`` takes every ``world_size``-th element from ``r`` (``n // world_size`` of them), so ranks see
    disjoint shards of each pass. ``set_start(p)`` makes the next iterator begin at this rank's
    position ``p``.

    Args:
        num_samples: size of the dataset (> 0).
        seed: base seed.
        shuffle: permute each pass.
        rank, world_size: data-parallel sharding.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if num_samples <= 0:
            raise ValueError(f"cannot sample from an empty dataset (num_samples={num_samples})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = int(rank)
        self.world_size = int(world_size)
        # samples of one pass for one rank: the remainder of a pass is dropped so that shards stay disjoint (each
        # pass is a new permutation, so no case is left out for good); fewer cases than ranks wrap around
        self.per_rank = max(self.num_samples // self.world_size, 1)
        self.start = 0

    def set_start(self, position: int) -> None:
        """The next iterator starts at this rank's stream position ``position`` (>= 0)."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        self.start = int(position)

    def _pass_indices(self, k: int) -> np.ndarray:
        if self.shuffle:
            perm = np.random.default_rng([self.seed, k]).permutation(self.num_samples)
        else:
            perm = np.arange(self.num_samples)
        padded = np.resize(perm, self.per_rank * self.world_size)  # truncates, or wraps if n < world_size
        return padded[self.rank :: self.world_size]

    def sample_seed(self, position: int) -> int:
        """The augmentation seed of this rank's sample at ``position``."""
        return int(np.random.SeedSequence([self.seed, self.rank, position, 0x5EED]).generate_state(1)[0] >> 1)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        k, j = divmod(position, self.per_rank)
        while True:
            indices = self._pass_indices(k)
            while j < self.per_rank:
                yield int(indices[j]), self.sample_seed(position)
                j += 1
                position += 1
            k, j = k + 1, 0


class SeededDataset(Dataset):
    """Wraps a MONAI dataset so that an item ``(index, seed)`` applies the random transforms seeded by ``seed``.

    Plain integer items are passed through unchanged (evaluation, MONAI Label).

    Args:
        dataset: a MONAI ``Dataset`` / ``CacheDataset`` (anything with ``transform`` and ``__getitem__``).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, tuple):
            index, seed = item
            transform = getattr(self.dataset, "transform", None)
            if transform is not None and hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=int(seed))
            return self.dataset[int(index)]
        return self.dataset[item]


def _torch_seed(seed: int, iteration: int) -> int:
    """Seed of torch's generators for one iteration (noise, dropout)."""
    return int(np.random.SeedSequence([seed, iteration, 0x7E4C]).generate_state(1)[0])


def seed_iteration(seed: int, iteration: int) -> None:
    """Seed torch's CPU and CUDA generators from ``(seed, iteration)``."""
    torch.manual_seed(_torch_seed(seed, iteration))
