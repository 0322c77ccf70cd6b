"""What a run did, in a few lines: the time of ``fit``, the final metrics and where every file went.

``RunReport`` records the time and the step training started from; ``summary_lines`` turns the
finished trainer into the lines printed at the end of training; ``finished_run_message`` explains a
resume that had nothing left to train.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L

from rosa_lightning.callbacks.adapter import AdapterExport

# the final metrics worth a line of their own; every val/* metric is shown as well
TRAIN_KEYS = ("train/loss", "train/answer_acc", "train/tokens_seen")


class RunReport(L.Callback):
    """``seconds``: wall time of ``fit``; ``start_step``: the global step the fit loop started at, or
    None when it never started (a resumed run that had already reached its limits)."""

    def __init__(self) -> None:
        self.start_step: Optional[int] = None
        self.seconds: Optional[float] = None
        self._t0 = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self.start_step, self.seconds = time.perf_counter(), None, None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self._t0


def finished_run_message(ckpt_path: str, trainer: L.Trainer) -> str:
    """Why resuming ``ckpt_path`` trained nothing, and the overrides that extend the run."""
    step, reached = trainer.global_step, []
    if trainer.max_steps is not None and 0 <= trainer.max_steps <= step:
        reached.append(("max_steps", trainer.max_steps, f"trainer.max_steps=<more than {step}>"))
    if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch:
        reached.append(("max_epochs", trainer.max_epochs, f"trainer.max_epochs=<more than {trainer.max_epochs}>"))
    limits = " and ".join(f"trainer.{name}={value}" for name, value, _ in reached) or "the trainer's limits"
    extend = " ".join(fix for *_, fix in reached) or "larger trainer.max_steps / trainer.max_epochs"
    verb = "is" if len(reached) < 2 else "are"
    return (f"ckpt_path={ckpt_path} is a finished run: it stopped at step {step} and {limits} {verb} already "
            f"reached, so nothing was trained. To train further, resume it with {extend}.")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _metric_lines(metrics: dict[str, float], width: int = 76) -> list[str]:
    """``key value`` pairs of the final metrics, wrapped at ``width`` characters."""
    keys = [k for k in TRAIN_KEYS if k in metrics] + sorted(k for k in metrics if k.startswith(("val/", "eval/")))
    lines: list[str] = []
    for pair in (f"{k} {_fmt(metrics[k])}" for k in keys):
        if lines and len(lines[-1]) + 2 + len(pair) <= width:
            lines[-1] += "  " + pair
        else:
            lines.append(pair)
    return lines


def _shown(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it (short lines), else as given."""
    try:
        return str(path.resolve().relative_to(base.resolve())) + ("/" if path.is_dir() else "")
    except ValueError:
        return str(path)


def _wandb_dir(lg: Any) -> Optional[Path]:
    """The local folder of a W&B logger's run (``offline-run-*`` or ``run-*``); ``run.dir`` is its
    ``files/`` subfolder. The run was started by the hyperparameter logging before ``fit``."""
    run_dir = getattr(lg.experiment, "dir", None)
    return Path(run_dir).parent if run_dir else None


def output_files(trainer: L.Trainer, output_dir: Path) -> list[tuple[str, Path]]:
    """(what, path) of every file or folder the run may have written: checkpoints, adapter, merged
    model, the best model kept during training, metrics CSV, W&B run and the text log. Called before the
    loggers finish (the W&B run is still open); ``summary_lines`` keeps those that exist after they flushed."""
    found: list[tuple[str, Optional[Path]]] = [("run dir", output_dir)]
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "dirpath", None):
        found.append(("checkpoints", Path(ckpt.dirpath)))
    for cb in trainer.callbacks:
        if isinstance(cb, AdapterExport):
            found += [("adapter", cb.exported), ("model", cb.exported_model)]
        best_dir = getattr(cb, "best_dir", None)  # evaluation.during_training.TaskEvaluation's kept best model
        if isinstance(best_dir, Path) and getattr(cb, "keep_best", False):
            found.append(("best model", best_dir))
    for lg in trainer.loggers:
        if type(lg).__name__ == "CSVLogger":
            found.append(("metrics csv", Path(lg.log_dir) / "metrics.csv"))
        elif type(lg).__name__ == "WandbLogger":
            found.append(("wandb", _wandb_dir(lg)))
    found += [("log", Path(h.baseFilename)) for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return [(what, Path(p)) for what, p in found if p is not None]


def summary_lines(trainer: L.Trainer, metrics: dict[str, float], report: RunReport, output_dir: Path,
                  files: list[tuple[str, Path]]) -> list[str]:
    """The end-of-training summary: steps and time, final metrics, and those of ``files`` that exist
    (paths in the run folder relative to it; the run folder relative to the working directory)."""
    seconds = report.seconds or 0.0
    trained = "nothing trained" if report.start_step is None else \
        f"steps {report.start_step}..{trainer.global_step}"
    lines = [f"Run finished: {trained} in {seconds // 60:.0f} min {seconds % 60:.0f} s"]
    lines += ["  " + line for line in _metric_lines(metrics)]
    # an empty folder (checkpoints under fast_dev_run) holds nothing worth pointing at
    run_dir = Path(output_dir)
    files = [(what, p) for what, p in files if p.is_file() or (p.is_dir() and (what == "run dir" or any(p.iterdir())))]
    width = max(len(what) for what, _ in files)
    lines += [f"  {what:<{width}}  {_shown(path, Path.cwd() if what == 'run dir' else run_dir)}"
              for what, path in files]
    return lines
