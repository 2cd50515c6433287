"""The epoch order and seed contract every loader follows, so a run is reproducible and resumable.

Order: epoch ``e`` visits ``randperm(N)`` drawn from a generator seeded with ``(seed, e)``, so a
resumed run can start in the middle of an epoch by skipping what was done (no data is read for
the skipped part). Augmentation: sample ``i`` of epoch ``e`` is augmented under its own seed
``(seed, e, i)``, so the same images come out whatever the number of workers and wherever a run
was resumed. Batched loaders seed one generator per batch (or per call) from ``(seed, e, b)``.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler

from ..data.base import EpochCoded, mix_seed

__all__ = ["EpochSampler", "SeededAugment", "mix_seed"]


class SeededAugment(EpochCoded):
    """Wraps a dataset; item ``epoch * N + i`` is item ``i`` augmented under seed ``(seed, epoch, i)``."""

    def __getitem__(self, code: int):
        index, seed = self.locate(code)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.inner[index]


class EpochSampler(Sampler):
    """One epoch of ``epoch * N + i`` codes in the seeded order, from batch ``skip_batches`` on.

    Under torch.distributed each of ``world_size`` processes takes its own ``batch_size`` slice of
    every global batch of ``batch_size * world_size``, so together they see what one process with
    the global batch would see, and a resumed run skips the same number of global batches."""

    def __init__(self, n: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def rank_order(self, device=None) -> torch.Tensor:
        """``(batches_per_epoch, batch_size)``: this process's indices for each batch of the epoch (on
        ``device``: the whole order is copied there at once)."""
        step, per_epoch = self.batch_size * self.world_size, self.batches_per_epoch
        order = self.order(self.epoch)[:per_epoch * step].to(device)
        return order.view(per_epoch, self.world_size, self.batch_size)[:, self.rank]

    def batches(self, device=None):
        """This process's index batches ``(batch_size,)`` for the current epoch, from ``skip_batches``."""
        per_batch = self.rank_order(device)
        for b in range(self.skip_batches, self.batches_per_epoch):
            yield per_batch[b]

    def __iter__(self):
        for batch in self.batches():
            yield from (self.epoch * self.n + batch).tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size
