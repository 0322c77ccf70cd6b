"""A callback for the multi-process tests: each rank writes what it trained on and where its weights ended."""
import hashlib
import json
from pathlib import Path

import lightning as L
import torch

from rosa_lightning.modeling.sharding import full_tensor


class RankProbe(L.Callback):
    """Writes ``<path>/rank<r>.json``: a hash of every training row this rank saw, per step, and a hash of its
    final parameters (equal on every rank when gradients were all-reduced; whole tensors under FSDP)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        ids = batch["input_ids"].detach().cpu()
        self.rows[trainer.global_step] = [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in ids]

    def on_train_end(self, trainer, pl_module):
        digest = hashlib.sha1()
        for name, p in sorted(pl_module.model.named_parameters()):
            digest.update(name.encode())  # a sharded (FSDP2) parameter is gathered: every rank runs this loop
            digest.update(full_tensor(p.detach()).to(torch.float32).cpu().numpy().tobytes())
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(
            {"rows": self.rows, "params": digest.hexdigest(), "stage": pl_module.stage,
             "world_size": trainer.world_size}))


class StopAtStep(L.Callback):
    """Ends fit cleanly on every rank after training step ``step`` (a stopped run; the schedule still spans
    ``trainer.max_steps``, as in a run that was killed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True
