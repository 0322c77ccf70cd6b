"""What a run leaves behind when training ends: the final ``last.ckpt``, the ROSA-only adapter and a merged
Hugging Face model directory, in that order, so a failing export never costs the trained steps."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import lightning as L

from rosa_lightning.data.loading import backbone_reference, load_tokenizer
from rosa_lightning.fileio import atomic_write_dir, remove_stale_temps
from rosa_lightning.modeling import save_adapter
from rosa_lightning.modeling.integrity import check_finite
from rosa_lightning.modeling.sharding import gather_full_state_dict, is_sharded

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The adapter or the merged model could not be written at the end of training."""


class AdapterExport(L.Callback):
    """At the end of ``fit`` (global rank 0): make sure ``last.ckpt`` holds the final step, then write
    ``save_adapter(pl_module.model, dirpath)`` and, with ``model_dirpath``, the merged model
    (``save_pretrained`` of the ROSA model: config with ``config.rosa``, safetensors weights, and the run's
    tokenizer when it has one).

    Both are written atomically and refused when a weight is NaN/inf. A failure raises ``ExportError``
    naming what failed and where the final checkpoint is. ``exported`` / ``exported_model`` hold the
    written paths. At the start of fit the temporaries of killed exports in those directories are removed.
    """

    def __init__(self, dirpath: str, model_dirpath: Optional[str] = None) -> None:
        self.dirpath = dirpath
        self.model_dirpath = model_dirpath
        self.exported: Optional[Path] = None
        self.exported_model: Optional[Path] = None
        self.final_checkpoint: Optional[Path] = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        removed = remove_stale_temps(self.dirpath)
        if self.model_dirpath:
            removed += remove_stale_temps(Path(self.model_dirpath).parent, targets={Path(self.model_dirpath).name})
        for path in removed:
            log.info("removed %s, a temporary file left by an export that no longer runs", path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.final_checkpoint = save_final_checkpoint(trainer)
        # a sharded model (FSDP2) is gathered on every rank (a collective); rank 0 writes what it gathered
        state = gather_full_state_dict(pl_module.model) if is_sharded(pl_module.model) else None
        if not trainer.is_global_zero:
            return
        kept = f"; the final checkpoint {self.final_checkpoint} is kept" if self.final_checkpoint else ""
        try:
            self.exported = save_adapter(pl_module.model, self.dirpath,
                                         backbone_trained=bool(getattr(pl_module, "backbone_trained", False)),
                                         state_dict=state)
        except Exception as exc:
            raise ExportError(f"the ROSA adapter could not be written to {self.dirpath} "
                              f"(callbacks.adapter_export.dirpath): {type(exc).__name__}: {exc}{kept}") from exc
        if self.model_dirpath:
            try:
                self.exported_model = save_merged_model(pl_module.model, self.model_dirpath,
                                                        run_tokenizer(trainer, pl_module), state_dict=state)
            except Exception as exc:
                raise ExportError(f"the merged model could not be written to {self.model_dirpath} "
                                  f"(callbacks.adapter_export.model_dirpath): {type(exc).__name__}: {exc}{kept}; "
                                  f"the adapter {self.exported} is written") from exc


def save_final_checkpoint(trainer: L.Trainer) -> Optional[Path]:
    """Write ``last.ckpt`` for the current step unless the checkpoint callback already did; returns its path.

    ``ModelCheckpoint`` writes its own final ``last.ckpt`` only in its ``on_train_end``, which Lightning runs
    after every other callback's, so an export failing before it would lose the last steps.
    """
    cb = trainer.checkpoint_callback
    if cb is None or not getattr(cb, "save_last", False) or trainer.sanity_checking or trainer.fast_dev_run:
        return None
    if getattr(cb, "_last_global_step_saved", None) != trainer.global_step or not cb.last_model_path:
        cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
    return Path(cb.last_model_path) if cb.last_model_path else None


def run_tokenizer(trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
    """The tokenizer of the run: the data source's (when it loaded one), else the backbone's, else None
    (a backbone built from a config, on synthetic data, has none)."""
    source = getattr(getattr(trainer, "datamodule", None), "source", None)
    tok = getattr(source, "tokenizer", None)
    if hasattr(tok, "save_pretrained"):
        return tok
    backbone = pl_module.hparams.get("backbone") if hasattr(pl_module, "hparams") else None
    if backbone_reference(backbone) is None:
        return None
    try:
        return load_tokenizer(backbone)
    except (OSError, ValueError) as exc:  # a weights-only directory: the model is still worth writing
        log.warning("the backbone %s has no loadable tokenizer (%s)", backbone_reference(backbone), exc)
        return None


def save_merged_model(model: Any, path: str, tokenizer: Any = None, state_dict: Optional[Mapping] = None) -> Path:
    """``model.save_pretrained`` (plus ``tokenizer.save_pretrained``) into ``path``, atomically; NaN/inf
    weights are refused before anything is written. ``state_dict``: the weights to write instead of the
    model's own (a sharded model's gathered state dict)."""
    check_finite((state_dict if state_dict is not None else model.state_dict()).items(), f"the merged model {path}")

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=None if state_dict is None else dict(state_dict))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    out = atomic_write_dir(path, write)
    if tokenizer is None:
        log.info("merged model written to %s without a tokenizer: this run has none (the backbone was built "
                 "from a config and the data is synthetic)", out)
    else:
        log.info("merged model and tokenizer written to %s", out)
    return out
