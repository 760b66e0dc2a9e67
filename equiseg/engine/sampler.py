"""Deterministic, resumable sampling of (index, seed) pairs.

The data stream of a run is a fixed function of (seed, stream id): epoch ``e`` is a permutation
drawn from ``numpy.random.default_rng((seed, stream, e))``, and the k-th global batch is the
k-th run of ``global_batch`` positions of the concatenated epochs. Rank ``r`` of ``W`` takes the
r-th slice of each global batch, so 1 process with batch B and W processes with batch B/W see the
same samples per step. Every draw also carries its own augmentation seed, so augmentations do not
depend on worker count or on where a run was resumed.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class InfiniteBatchSampler(Sampler):
    def __init__(self, dataset_size: int, global_batch: int, rank: int, world_size: int,
                 seed: int, stream: int, start_batch: int = 0, shuffle: bool = True):
        if dataset_size < 1:
            raise ValueError("cannot sample from an empty dataset")
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {world_size}")
        self.n = dataset_size
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.stream = stream
        self.start_batch = start_batch
        self.shuffle = shuffle

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng((self.seed, self.stream, epoch)).permutation(self.n)

    def sample_seed(self, position: int) -> int:
        """Augmentation seed of the draw at a stream position (unique per seed/stream/position)."""
        return int(np.random.SeedSequence((self.seed, self.stream, position)).generate_state(1, np.uint32)[0])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.start_batch
        cached_epoch, order = -1, None
        while True:
            first = batch * self.global_batch + self.rank * self.local_batch
            items = []
            for position in range(first, first + self.local_batch):
                epoch, offset = divmod(position, self.n)
                if epoch != cached_epoch:
                    cached_epoch, order = epoch, self._epoch_order(epoch)
                items.append((int(order[offset]), self.sample_seed(position)))
            yield items
            batch += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs this for len(loader)
        return 2**62
