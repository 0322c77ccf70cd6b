"""``RetrievalRuntime``: the retrieval executor's lifecycle, the CPU-core budget, and per-step timing.

CPU budget (docs/pipeline.md §3; ``rosa_lightning.retrieval.budget.cpu_budget``), per rank on a node with
``usable`` cores (the CPU affinity count) and ``local_world`` ranks::

    per_rank       = usable // local_world
    kernel_threads = max(1, per_rank - cpu_reserved - num_workers)     (rosa.runtime.num_threads: auto)
    torch_threads  = 1 on accelerator ranks; on CPU ranks max(1, per_rank - num_workers)

DataLoader workers run the token channel with ``data.token_threads`` threads each. On CPU ranks
torch keeps the rank's cores because the retrieval kernel runs only during the part of each ROSA
layer it overlaps (attention); the logged ``rosa/overlap_fraction`` shows how well that works.

Timing, logged every ``log_every_n_steps`` training steps:

    time/data_wait_s      end of the previous training batch -> start of this one (the fetch of
                          this batch, plus Lightning's bookkeeping between the hooks)
    time/step_s           start -> end of this training batch (forward, backward, optimizer)
    rosa/retrieval_cpu_s  kernel seconds in the worker thread, summed over the ROSA layers
    rosa/wait_s           main-thread seconds blocked on retrieval results
    rosa/overlap_fraction share of the retrieval time hidden behind other work
    rosa/deferred_cpu_s   kernel seconds of the deferred counterfactual jobs (defer_counterfactuals)
    rosa/backward_wait_s  seconds the backward was blocked on them (0 when they kept up)
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional, Union

import lightning as L
import torch

from rosa_lightning.modeling import attach_pipeline, rosa_timing_stats
from rosa_lightning.retrieval.budget import cpu_budget, usable_cores
from rosa_lightning.retrieval.pipeline import RetrievalPipeline

log = logging.getLogger(__name__)


class RetrievalRuntime(L.Callback):
    """Owns the model's retrieval executor (a ``RetrievalPipeline``) for a fit/validate run: creates it
    with the budgeted kernel threads, starts and attaches it, and closes it at teardown and on
    exceptions (so no worker thread outlives a failed job).

    Args:
        cpu_reserved: cores kept for the rank's main thread when sizing the kernel threads.
        torch_threads: "auto" (see module docstring) or an int; None leaves torch's setting.
        log_every_n_steps: how often the timing figures are logged.
        wait_timeout_s: the longest a layer waits for its retrieval result before the run ends with an
            error naming the layer (None = forever).
        defer_counterfactuals: "auto" (defer on accelerators), True or False; see ``RetrievalPipeline``.
    """

    def __init__(self, cpu_reserved: int = 1, torch_threads: Union[str, int, None] = "auto",
                 log_every_n_steps: int = 1, wait_timeout_s: Optional[float] = 600.0,
                 defer_counterfactuals: Union[bool, str] = "auto") -> None:
        self.cpu_reserved = int(cpu_reserved)
        self.defer_counterfactuals = defer_counterfactuals
        self.wait_timeout_s = wait_timeout_s
        self.torch_threads = torch_threads
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.budget: dict[str, int] = {}
        self.executor: Any = None
        self._last_end: Optional[float] = None
        self._start: Optional[float] = None
        self._data_wait = 0.0

    # ---- lifecycle ----------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        workers = int(getattr(dm, "num_workers", 0) or 0)
        local_world = max(1, trainer.world_size // max(1, trainer.num_nodes))
        on_acc = trainer.strategy.root_device.type != "cpu"
        self.budget = cpu_budget(usable_cores(), local_world, workers, self.cpu_reserved, on_acc)
        if self.torch_threads == "auto":
            torch.set_num_threads(self.budget["torch"])
        elif self.torch_threads is not None:
            torch.set_num_threads(int(self.torch_threads))
        self._close()
        self.executor = self._start_executor(pl_module.model, self.budget["kernel"])
        log.info("rank %d/%d: %d of %d cores (%d ranks on this node, %d DataLoader workers): %d retrieval kernel "
                 "threads, %d torch threads", trainer.global_rank, trainer.world_size, self.budget["per_rank"],
                 usable_cores(), local_world, workers, self.executor.num_threads, torch.get_num_threads())

    def _start_executor(self, model: torch.nn.Module, kernel_threads: int) -> Any:
        wanted = model.rosa_config.runtime.num_threads
        executor = RetrievalPipeline(kernel_threads if wanted == "auto" else int(wanted),
                                     wait_timeout_s=self.wait_timeout_s,
                                     defer_counterfactuals=self.defer_counterfactuals).start()
        attach_pipeline(model, executor)
        return executor

    def _close(self, model: Optional[torch.nn.Module] = None) -> None:
        executor, self.executor = self.executor, None
        if executor is None:
            return
        try:
            if model is not None and model.model.retrieval_pipeline is executor:
                attach_pipeline(model, None)
        finally:
            executor.close()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close(pl_module.model)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close(pl_module.model)

    # ---- timing -------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()
        self._data_wait = self._start - self._last_end if self._last_end is not None else 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        step_s = now - (self._start or now)
        self._last_end = now
        stats = rosa_timing_stats(pl_module.model, reset=True)
        if (trainer.global_step % self.log_every_n_steps) != 0:
            return
        values = {"time/data_wait_s": self._data_wait, "time/step_s": step_s,
                  "rosa/retrieval_cpu_s": float(stats["retrieval_cpu_s"]), "rosa/wait_s": float(stats["wait_s"]),
                  "rosa/overlap_fraction": float(stats["overlap_fraction"]),
                  "rosa/deferred_cpu_s": float(stats["deferred_cpu_s"]),
                  "rosa/backward_wait_s": float(stats["backward_wait_s"]),
                  "rosa/kernel_threads": float(self.executor.num_threads if self.executor else 0)}
        pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # the first fetch of an epoch includes starting the workers
