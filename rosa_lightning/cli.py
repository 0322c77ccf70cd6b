"""``train(cfg)`` and the Hydra entry point.

``train`` instantiates, in this order: data -> model -> callbacks -> loggers -> trainer, then fits
(optionally resuming from ``ckpt_path``) and returns ``(metrics, objects)``. Whatever happens, the
loggers are finished (W&B included), so a failing job of a multirun does not hang the sweep. Every run
also writes its metrics to a CSV, shows an 80-column progress bar and ends with a summary of its final
metrics and files (``rosa_lightning.callbacks.report``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from rosa_lightning.callbacks.progress import CompactProgressBar
from rosa_lightning.callbacks.report import RunReport, finished_run_message, output_files, summary_lines

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def instantiate_group(cfg: Optional[DictConfig], kind: str) -> list:
    """Instantiate every entry with a ``_target_`` of a config group (callbacks, loggers)."""
    objs = []
    if not cfg:
        return objs
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"the {kind} config must be a mapping of name -> config, got {type(cfg).__name__}")
    for name, sub in cfg.items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            log.info("instantiating %s <%s> (%s)", kind, name, sub._target_)
            objs.append(hydra.utils.instantiate(sub))
    return objs


def finish_loggers(loggers: list) -> None:
    """Close the loggers' runs (``wandb.finish`` for W&B), also after a failure."""
    for lg in loggers:
        try:
            lg.finalize("success")
        finally:
            if type(lg).__name__ == "WandbLogger":
                import wandb  # only with a W&B logger, which has imported it already

                if wandb.run is not None:
                    wandb.finish()


def log_hyperparameters(cfg: DictConfig, loggers: list, model: Any) -> None:
    """Send the resolved config and parameter counts to every logger."""
    params = {"cfg": OmegaConf.to_container(cfg, resolve=True),
              "params/total": sum(p.numel() for p in model.parameters()),
              "params/trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    for lg in loggers:
        lg.log_hyperparams(params)


def single_console_output() -> None:
    """``import lightning`` gives the ``lightning`` logger a console handler of its own, while the logger
    also propagates to the root handlers Hydra configured: every Lightning INFO line printed twice.
    Where the root logger has handlers, Lightning's own is removed."""
    lightning_log = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning_log.handlers):
            lightning_log.removeHandler(handler)


def run_callbacks(cfg: DictConfig, callbacks: list) -> tuple[list, Any]:
    """``callbacks`` plus the run report and, unless one was configured, the 80-column progress bar."""
    report = RunReport()
    extra = [report]
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        extra.append(CompactProgressBar())
    return callbacks + extra, report


def with_metrics_csv(loggers: list, output_dir: str) -> list:
    """``loggers`` plus a CSV logger (``<output_dir>/csv/version_0/metrics.csv``) unless one is there:
    every run keeps a human-readable table of its metrics, whatever the logger."""
    if any(isinstance(lg, CSVLogger) for lg in loggers):
        return loggers
    return loggers + [CSVLogger(save_dir=output_dir, name="csv")]


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Fit the model described by ``cfg``; returns (metrics, objects by name)."""
    single_console_output()
    L.seed_everything(cfg.seed, workers=True)
    log.info("instantiating datamodule <%s>", cfg.data._target_)
    datamodule = hydra.utils.instantiate(cfg.data)
    log.info("instantiating model <%s>", cfg.model._target_)
    model = hydra.utils.instantiate(cfg.model)
    callbacks, report = run_callbacks(cfg, instantiate_group(cfg.get("callbacks"), "callback"))
    loggers = with_metrics_csv(instantiate_group(cfg.get("logger"), "logger"), cfg.paths.output_dir)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "callbacks": callbacks, "logger": loggers}
    try:
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
        objects["trainer"] = trainer
        log_hyperparameters(cfg, loggers, model)
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("validate_after_fit"):
            for result in trainer.validate(model=model, datamodule=datamodule):
                metrics.update({k: float(v) for k, v in result.items()})
        files = output_files(trainer, Path(cfg.paths.output_dir))
    finally:
        finish_loggers(loggers)
    if report.start_step is None and cfg.get("ckpt_path"):
        log.warning(finished_run_message(cfg.ckpt_path, trainer))
    # one record, after the loggers' own end-of-run output, so it is the last thing printed
    if trainer.is_global_zero:  # one summary per run, not one per rank
        log.info("\n".join(summary_lines(trainer, metrics, report, cfg.paths.output_dir, files)))
    return metrics, objects


def metric_value(metrics: dict, name: Optional[str]) -> Optional[float]:
    """The value Hydra sweepers optimise (``optimized_metric``), or None."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name!r} was not logged; logged: {sorted(metrics)}")
    return metrics[name]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    metrics, _ = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))
