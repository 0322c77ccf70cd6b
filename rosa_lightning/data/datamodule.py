"""``RosaDataModule``: rows from a source, batches with the token channel, a CPU budget for the workers."""
from __future__ import annotations

from typing import Any, Optional, Union

import lightning as L
import torch
from torch.utils.data import DataLoader

from rosa_lightning.data.collate import RosaCollate
from rosa_lightning.data.resumable import ResumableLoader, SeededSampler, ValLoader


def _worker_init(_worker_id: int) -> None:
    # a worker's CPU work is the collate's token channel, which has its own thread count;
    # torch intra-op threads in every worker would oversubscribe the cores
    torch.set_num_threads(1)


class RosaDataModule(L.LightningDataModule):
    """Train/val DataLoaders over ``source.build(seed)`` (see ``rosa_lightning.data.sources``).

    Args:
        source: an object with ``build(seed) -> (train_dataset, val_dataset)``.
        batch_size: rows per batch and rank; ``val_batch_size`` defaults to it.
        num_workers: DataLoader worker processes per rank (0 = main process).
        prefetch_factor: batches prepared ahead per worker (ignored with 0 workers).
        pin_memory: "auto" pins when CUDA is available.
        token_channel: ``model.rosa.token_channel`` ("off" | "shared" | "own") or a bool; when on,
            every batch carries ``rosa_token_ids`` computed in the workers.
        token_threads: kernel threads per worker for the token channel.
        seed: drives the shuffling order (and the synthetic examples through ``source.build``).
        seq_len: when given, every row must have exactly this many tokens (checked in ``setup``).
        timeout_s: with workers, the longest wait for one batch before the run ends with an error naming
            the hung DataLoader (None or 0 = wait forever).
    """

    def __init__(self, source: Any, batch_size: int = 8, val_batch_size: Optional[int] = None,
                 num_workers: int = 0, prefetch_factor: int = 2, pin_memory: Union[bool, str] = "auto",
                 persistent_workers: bool = False, token_channel: Union[bool, str] = False,
                 token_threads: int = 1, shuffle: bool = True, seed: int = 0,
                 seq_len: Optional[int] = None, timeout_s: Optional[float] = 600.0) -> None:
        super().__init__()
        if not hasattr(source, "build"):
            raise TypeError(f"data.source must have a build(seed) method, got {type(source).__name__}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.source = source
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.prefetch_factor = int(prefetch_factor)
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.collate = RosaCollate(token_channel, token_threads)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.seq_len = seq_len
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                      or timeout_s < 0):
            raise ValueError(f"data.timeout_s must be null or a number of seconds >= 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s or 0.0)
        self.train_set = self.val_set = None
        self._train_loader: Optional[ResumableLoader] = None
        self._pending_loader_state: Optional[dict] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.source.build(self.seed)
            if len(self.train_set) == 0:
                raise ValueError(f"data source {type(self.source).__name__} made no training rows")
            got = self.row_tokens()
            if self.seq_len is not None and got != self.seq_len:
                raise ValueError(f"data.seq_len={self.seq_len} but the source makes rows of {got} tokens")

    def row_tokens(self) -> int:
        """Tokens per row of the training set (after ``setup``)."""
        return int(self.train_set[0]["input_ids"].shape[0])

    def _loader_kwargs(self) -> dict:
        kw: dict[str, Any] = dict(num_workers=self.num_workers, collate_fn=self.collate,
                                  pin_memory=self.pin_memory)
        if self.num_workers > 0:
            kw.update(prefetch_factor=self.prefetch_factor, persistent_workers=self.persistent_workers,
                      worker_init_fn=_worker_init, timeout=self.timeout_s)
        return kw

    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        world, rank = self._replicas()
        sampler = SeededSampler(len(self.train_set), self.seed, self.shuffle, world, rank)
        loader = ResumableLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                                 **self._loader_kwargs())
        if self._pending_loader_state is not None:
            loader.load_state_dict(self._pending_loader_state)
            self._pending_loader_state = None
        self._train_loader = loader
        return loader

    # The data position is restored through the DataModule's own checkpoint state: Lightning restores
    # it before ``configure_optimizers`` (which may build the train loader early to count the steps),
    # whereas the loader-level state would arrive after that loader was already built.
    def state_dict(self) -> dict:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        loader_state = state.get("train_loader")
        if loader_state is not None and self._train_loader is not None:
            # strategies that restore the checkpoint after setup (ModelParallelStrategy, FSDP2) do so once the
            # step count has built the loader: it takes the position directly (it is not iterated yet)
            self._train_loader.load_state_dict(loader_state)
            return
        self._pending_loader_state = loader_state

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        world, rank = self._replicas()
        sampler = SeededSampler(len(self.val_set), self.seed, False, world, rank)
        return ValLoader(self.val_set, batch_size=self.val_batch_size, sampler=sampler, drop_last=False,
                          **self._loader_kwargs())
