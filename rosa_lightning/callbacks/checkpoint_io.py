"""Checkpoint writes that never leave a half-written file under the final name, never store NaN/inf
weights, and carry a checksum of their tensors that is verified when they are read back."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rosa_lightning.fileio import atomic_write, remove_stale_temps
from rosa_lightning.modeling.integrity import check_finite, tensor_checksum, verify_checksum

log = logging.getLogger(__name__)
CHECKSUM_KEY = "rosa_checksum"
# the parts of a Lightning checkpoint that hold tensors worth protecting: weights and optimizer moments
CHECKED_PARTS = ("state_dict", "optimizer_states")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path`` (``rosa_lightning.fileio``), then rename it onto it.

    A crash (or a kill) mid-write leaves at most a temporary file, which the next run removes
    (``TempFileCleanup``); a reader sees either the old checkpoint or the complete new one.
    """
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _tensors(value: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, sub in value.items():
            yield from _tensors(sub, f"{prefix}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            yield from _tensors(sub, f"{prefix}.{i}")


def checkpoint_tensors(checkpoint: Mapping) -> list[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) for every tensor of the checkpoint's weights and optimizer states."""
    return [item for part in CHECKED_PARTS for item in _tensors(checkpoint.get(part, {}), part)]


def seal_checkpoint(checkpoint: dict, path: Any) -> dict:
    """The checkpoint with its checksum added; raises ``NonFiniteError`` naming ``path`` on NaN/inf tensors."""
    tensors = checkpoint_tensors(checkpoint)
    check_finite(tensors, f"checkpoint {path}")
    return {**checkpoint, CHECKSUM_KEY: tensor_checksum(tensors)}


def verify_checkpoint(checkpoint: Mapping, path: Any) -> None:
    """Raise ``ChecksumError`` naming ``path`` when the tensors do not match the stored checksum (warns
    once for checkpoints written before checksums)."""
    verify_checksum(checkpoint_tensors(checkpoint), checkpoint.get(CHECKSUM_KEY), f"checkpoint {path}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic (``atomic_torch_save``), whose checkpoints carry
    a checksum of their tensors (verified on load) and which refuses to write NaN/inf weights.

    Remote URLs (fsspec protocols other than the local file system) keep Lightning's own writer,
    which has no rename to make atomic.
    """

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        checkpoint = seal_checkpoint(checkpoint, path)
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict:
        checkpoint = super().load_checkpoint(path, *args, **kwargs)
        verify_checkpoint(checkpoint, path)
        return checkpoint


class TempFileCleanup(L.Callback):
    """At the start of fit (global rank 0), delete the temporaries that killed writers left in the
    checkpoint directories, the directory of the resumed checkpoint and ``extra_dirs``.

    Only names of the project's own pattern (``rosa_lightning.fileio``) whose writer process is gone
    are deleted.
    """

    def __init__(self, extra_dirs: Optional[list[str]] = None) -> None:
        self.extra_dirs = list(extra_dirs or [])
        self.removed: list[Path] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dirs = [cb.dirpath for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        if trainer.ckpt_path and "://" not in str(trainer.ckpt_path):
            dirs.append(str(Path(trainer.ckpt_path).parent))
        for d in dict.fromkeys(dirs + self.extra_dirs):
            for path in remove_stale_temps(d):
                self.removed.append(path)
                log.info("removed %s, a temporary file left by a writer that no longer runs", path)
