"""Export of the ROSA-only adapter (``rosa.*`` parameters and the ROSA config) when training ends."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L


class AdapterExport(L.Callback):
    """Write ``save_adapter(pl_module.model, dirpath)`` at the end of ``fit`` (global rank 0).

    ``save_adapter`` writes to a temporary file and renames it, so an interrupted export never
    leaves a truncated adapter. ``exported`` holds the written file.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.exported: Optional[Path] = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from rosa_lightning.modeling import save_adapter

        if trainer.is_global_zero:
            self.exported = save_adapter(pl_module.model, self.dirpath)
