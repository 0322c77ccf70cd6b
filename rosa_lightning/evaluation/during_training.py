"""``TaskEvaluation``: score the model on RULER ``niah_single_1`` while it trains, and keep the best weights.

Long-context ability is not monotone in training steps: on the retrofit study's backbone the needle score
after stage B rose with its length and then fell again while the loss kept improving
(experiments/retrofit_recovery). The loss cannot tell which checkpoint finds the needle best, so this
callback generates on a fixed set of NIAH samples every ``every_n_train_steps`` steps (and once more when
training ends), logs the score as ``eval/niah_single_1_<length>`` and, with ``keep_best``, writes the merged
model of the best step so far (``save_pretrained`` and the run's tokenizer, the same layout as the run's
``model/``) to ``<dirpath>/<task>/``, with ``best.json`` in it naming its step and score and
``predictions_<length>.jsonl`` holding what it answered; the directory is
replaced atomically, so a kill leaves the previous best whole.
``eval.py run_dir=<dirpath>/<task>`` and ``generate.py`` load it as they load a run.

The samples are RULER's (``rosa_lightning.evaluation.niah``) with their own ``seed``, which by default
differs from ``eval.py``'s 42, so the choice of checkpoint never sees the samples a final evaluation
reports. Generation is greedy, as in ``eval.py``, with ``max_new_tokens`` (RULER's 128 by default) and
batches of ``batch_size`` rows. Every evaluation is appended to ``<dirpath>/curve.jsonl`` (its step, the score
of every length, its seconds and whether it was the best so far).

Under DDP every rank generates its share of the samples and the predictions are gathered from every rank, so
every rank scores all of them and sees the same score. A sharded model (FSDP) is refused at setup: its ranks would have to run the
same number of forwards in step.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch

from rosa_lightning.callbacks.adapter import run_tokenizer
from rosa_lightning.evaluation.niah import score_niah_sample
from rosa_lightning.evaluation.runner import predict
from rosa_lightning.evaluation.tasks import Task, niah_task
from rosa_lightning.fileio import atomic_write_dir
from rosa_lightning.modeling.integrity import check_finite
from rosa_lightning.modeling.sharding import is_sharded

log = logging.getLogger(__name__)


class TaskEvaluation(L.Callback):
    """Periodic RULER ``niah_single_1`` evaluation during ``fit``, keeping the best step's merged model.

    Args:
        niah_lengths: NIAH context lengths (prompt + generated tokens, RULER's ``max_seq_length``).
        num_samples: samples per length.
        seed: the samples' seed (keep it apart from the final evaluation's, 42 in ``conf/eval.yaml``).
        every_n_train_steps: evaluate after every this many optimizer steps (and at the end of training).
        monitor: which length decides the best step (default: the first of ``niah_lengths``).
        keep_best: write the best step's merged model to ``<dirpath>/niah_single_1_<monitor>/``.
        dirpath: where the best model and ``curve.jsonl`` go.
        max_new_tokens: generated tokens per sample (None: RULER's 128).
        batch_size: rows per ``generate`` call.
    """

    def __init__(self, niah_lengths: Sequence[int], num_samples: int = 50, seed: int = 7,
                 every_n_train_steps: int = 400, monitor: Optional[int] = None, keep_best: bool = True,
                 dirpath: str = "best", max_new_tokens: Optional[int] = None, batch_size: int = 8) -> None:
        lengths = [int(n) for n in (niah_lengths or [])]
        if not lengths or any(n < 1 for n in lengths):
            raise ValueError(f"niah_lengths must be a non-empty list of positive lengths, got {niah_lengths!r}")
        for name, value in (("num_samples", num_samples), ("every_n_train_steps", every_n_train_steps),
                            ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        if max_new_tokens is not None and int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be at least 1 or null (RULER's 128), got {max_new_tokens!r}")
        monitor = lengths[0] if monitor is None else int(monitor)
        if monitor not in lengths:
            raise ValueError(f"monitor={monitor} is not one of niah_lengths={lengths}")
        self.lengths, self.monitor = lengths, monitor
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.every_n_train_steps, self.keep_best = int(every_n_train_steps), bool(keep_best)
        self.dirpath = Path(dirpath)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.best_score: Optional[float] = None
        self.best_step: Optional[int] = None
        self.history: list[dict] = []
        self._tokenizer: Any = None       # for generation (left padding, a pad token)
        self._run_tokenizer: Any = None   # as the run has it, saved with the best model
        self._tasks: dict[int, Task] = {}       # the samples of this rank and RULER's score, by length
        self._last_step: Optional[int] = None

    @property
    def best_dir(self) -> Path:
        return self.dirpath / f"niah_single_1_{self.monitor}"

    # ---- lifecycle ----------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if is_sharded(pl_module.model):
            raise ValueError("TaskEvaluation cannot generate with a sharded (FSDP) model: its ranks must run the "
                             "same forwards in step. Drop callbacks.task_eval and evaluate the saved checkpoints "
                             "with eval.py")
        tok = run_tokenizer(trainer, pl_module)
        if tok is None:
            raise ValueError("TaskEvaluation needs the run's tokenizer to build NIAH prompts, and this run has none "
                             "(a backbone built from a config on synthetic token ids); set model.backbone to a "
                             "directory with a tokenizer, or drop callbacks.task_eval")
        self._run_tokenizer = tok
        tok = copy.deepcopy(tok)  # left padding and a pad token for generation, the data's tokenizer untouched
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self._tokenizer = tok
        rank, world = trainer.global_rank, trainer.world_size
        for n in self.lengths:
            task = niah_task(tok, n, num_samples=self.num_samples, seed=self.seed)
            samples = [dataclasses.replace(x, max_new_tokens=self.max_new_tokens or x.max_new_tokens)
                       for x in task.samples]
            self._tasks[n] = dataclasses.replace(task, samples=samples[rank::world])  # this rank's share

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_train_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step and not trainer.sanity_checking:
            self.evaluate(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:  # a resumed run keeps its best so far
        self.best_score, self.best_step = state.get("best_score"), state.get("best_step")
        self.history = list(state.get("history") or [])

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[int, float]:
        """Score every length now; log, record and (with ``keep_best``) keep the best model. Returns the scores."""
        step, start = trainer.global_step, time.perf_counter()
        self._last_step = step
        model = pl_module.model
        modes = {m: m.training for m in model.modules()}
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        scores: dict[int, float] = {}
        predictions: dict[int, list[dict]] = {}
        try:
            model.eval()
            for n in self.lengths:
                scores[n], predictions[n] = self._score(trainer, model, self._tasks[n])
        finally:
            for m, was in modes.items():
                m.train(was)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        seconds = time.perf_counter() - start
        metrics = {f"eval/niah_single_1_{n}": s for n, s in scores.items()}
        metrics["time/task_eval_s"] = seconds
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
        for name, value in metrics.items():  # visible to ModelCheckpoint(monitor=...) and the progress bar
            trainer.callback_metrics[name] = torch.tensor(float(value))
        score = scores[self.monitor]
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score, self.best_step = score, step
        entry = {"step": step, **{f"niah_single_1_{n}": s for n, s in scores.items()}, "seconds": round(seconds, 2),
                 "best": improved}
        self.history.append(entry)
        if improved and self.keep_best:
            self._save_best(trainer, pl_module, step, score, predictions)
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            with open(self.dirpath / "curve.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            log.info("step %d: %s (%.1f s)%s", step,
                     ", ".join(f"niah_single_1_{n} {s:.2f}" for n, s in scores.items()), seconds,
                     " - best so far" if improved else f" - best {self.best_score:.2f} at step {self.best_step}")
        return scores

    @torch.no_grad()
    def _score(self, trainer: L.Trainer, model: torch.nn.Module, task: Task) -> tuple[float, list[dict]]:
        """RULER's score over every rank's samples, and their prediction rows (gathered from every rank)."""
        preds = predict(model, self._tokenizer, task.samples, batch_size=self.batch_size, max_batch_tokens=1 << 30)
        rows = [{"_id": s.key, "pred": preds[s.key], "answers": s.meta["answers"],
                 "score": score_niah_sample(preds[s.key], s.meta["answers"])} for s in task.samples]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        return task.score(rows), rows

    def _save_best(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, score: float,
                   predictions: dict[int, list[dict]]) -> None:
        if not trainer.is_global_zero:
            return
        model = pl_module.model
        check_finite(model.state_dict().items(), f"the best model {self.best_dir}")
        record = {"step": step, "task": f"niah_single_1_{self.monitor}", "score": score,
                  "num_samples": self.num_samples, "seed": self.seed, "lengths": self.lengths,
                  "max_new_tokens": self.max_new_tokens}

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            self._run_tokenizer.save_pretrained(tmp)
            (tmp / "best.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            for n, rows in predictions.items():
                (tmp / f"predictions_{n}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                    for r in rows), encoding="utf-8")

        path = atomic_write_dir(self.best_dir, write)
        log.info("kept the model of step %d (niah_single_1_%d %.2f) in %s", step, self.monitor, score, path)
