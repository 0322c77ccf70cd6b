"""A seeded, rank-aware sampler and a DataLoader that Lightning can checkpoint mid-epoch.

The order of epoch e is a permutation drawn from (seed, e) alone, so it is the same whatever the
number of workers, and a resumed run can skip exactly the batches the interrupted run consumed.
Lightning stores ``ResumableLoader.state_dict()`` in the checkpoint (``fit_loop.combined_loader``) and
calls ``load_state_dict`` before it creates the iterator of the resumed epoch.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class SeededSampler(Sampler[int]):
    """Indices 0..n-1 in a per-epoch seeded order (or in order), sharded over ``num_replicas`` ranks.

    Each rank gets ``n // num_replicas`` indices (the remainder is dropped so ranks stay in step).
    ``skip`` drops that many of this rank's first indices once, on the next ``__iter__`` (resume).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        if n < 1:
            raise ValueError(f"SeededSampler needs a non-empty dataset, got n={n}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        mine = order[self.rank : len(self) * self.num_replicas : self.num_replicas]
        skip, self.skip = self.skip, 0
        return iter(mine[skip:].tolist())


class DataLoaderTimeout(TimeoutError):
    """No batch arrived from the DataLoader workers within the DataLoader's ``timeout``."""


class NamedTimeoutLoader(DataLoader):
    """``DataLoader`` whose worker timeout (``timeout`` seconds without a batch) ends in an error that says
    what hung and which setting bounds it, instead of torch's bare "DataLoader timed out"."""

    split = "train"

    def __iter__(self):
        try:
            yield from super().__iter__()
        except RuntimeError as exc:
            if not self.timeout or "timed out" not in str(exc):
                raise
            raise DataLoaderTimeout(
                f"no {self.split} batch arrived from the DataLoader workers within {self.timeout:g} s "
                f"(data.timeout_s): a worker hangs in the data source or the collate (token channel). Raise "
                f"data.timeout_s if one batch legitimately takes longer") from exc


class ValLoader(NamedTimeoutLoader):
    split = "validation"


class ResumableLoader(NamedTimeoutLoader):
    """``DataLoader`` over a ``SeededSampler`` that counts the batches it has handed out this epoch.

    The count is exact at checkpoint time because Lightning does not prefetch from loaders that have
    a length; the state is ``{"epoch", "batches"}``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, SeededSampler):
            raise TypeError("ResumableLoader needs a SeededSampler")
        self._batches = 0
        self._resumed_batches = 0

    def __iter__(self):
        self._batches, self._resumed_batches = self._resumed_batches, 0
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self._batches}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved at the end of an epoch: the next one starts fresh
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = batches * int(self.batch_size)
        self._resumed_batches = batches
