"""A progress bar that fits an 80-column terminal.

Lightning's Rich bar shows every ``prog_bar`` metric plus ``v_num`` and a speed column; at 80 columns
the metrics wrap into a narrow column several lines high. This one keeps the description, a short
bar, the batch count and the times, and shows only a few metrics under short names.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import (
    BatchesProcessedColumn,
    CustomBarColumn,
    CustomTimeColumn,
)

# display name -> logged metric; the last validation accuracy is what tells whether a run learns
DEFAULT_SHOW = {"loss": "train/loss", "val_acc": "val/answer_acc"}


class CompactProgressBar(RichProgressBar):
    """Rich progress bar with a ``bar_width``-character bar and only the metrics in ``show``.

    ``show`` maps the name shown in the bar to the logged metric (any key of
    ``trainer.callback_metrics``, whether or not it was logged with ``prog_bar=True``); metrics not
    logged yet are left out.
    """

    def __init__(self, show: Optional[Mapping[str, str]] = None, bar_width: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.show = dict(DEFAULT_SHOW if show is None else show)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.show.items()):
            raise TypeError(f"show must map display names to metric names (str -> str), got {self.show!r}")
        if int(bar_width) < 1:
            raise ValueError(f"bar_width must be a positive number of characters, got {bar_width!r}")
        self.bar_width = int(bar_width)

    def configure_columns(self, trainer: Any) -> list:
        return [
            super().configure_columns(trainer)[0],  # the description ("Epoch 0/0", "Validation")
            CustomBarColumn(bar_width=self.bar_width, complete_style=self.theme.progress_bar,
                            finished_style=self.theme.progress_bar_finished,
                            pulse_style=self.theme.progress_bar_pulse),
            BatchesProcessedColumn(style=self.theme.batch_progress),
            CustomTimeColumn(style=self.theme.time),
        ]

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, float]:
        logged = trainer.callback_metrics
        return {name: float(logged[key].item() if isinstance(logged[key], torch.Tensor) else logged[key])
                for name, key in self.show.items() if key in logged}
