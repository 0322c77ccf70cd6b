"""The retrieval seam: the one interface through which a ROSA layer gets its retrieval results.

A ROSA layer computes its Q and K symbols, hands them to a ``Retriever`` with ``submit`` and goes on with other
work (the V projection, attention); when it needs the result it calls ``result(v_sym)`` on what ``submit``
returned and gets a ``LayerRetrieval``: tau, the V symbol at tau, and the counterfactual destinations when they
were asked for. Two implementations:

* batch, ``retrieval.pipeline.RetrievalPipeline``: whole sequences in training and full forwards; the kernel runs
  on a worker thread while the layer computes, with counterfactuals when gradients reach Q/K/V
  (docs/pipeline.md);
* streaming, ``retrieval.streaming.RosaGenerationCache``: the state of one ``generate`` call; each forward
  extends per-layer automata by its new positions (docs/generation.md §2, §3). No counterfactuals.

Both return the same tau as ``rosa_match`` over the whole sequence (docs/retrieval.md), which the tests check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch


class DeferredCounterfactuals(Protocol):
    """Counterfactual destinations computed off the critical path: ``wait()`` returns them (on the layer's
    device) once they are ready; ``on_wait(blocked_s, kernel_s)``, when set, is told on the first ``wait`` how long
    it blocked and how long the deferred job ran."""

    on_wait: Optional[Callable[[float, float], None]]

    def wait(self) -> torch.Tensor: ...


@dataclass
class LayerRetrieval:
    """One layer's retrieval result, on the layer's device.

    Attributes:
        tau: int16/int32 [B, R, T] destination times, -1 = none.
        v_at_tau: uint8 [B, R, T], the V symbol at tau (0 where tau = -1).
        cf: int16/int32 [B, R, NQ, M] flipped-bit destinations per Q-run (docs/gradients.md §1), or None when they
            were not asked for or are deferred.
        cf_deferred: the counterfactual destinations when they are computed off the critical path (the layer's
            backward waits for them), else None.
        retrieval_s: seconds the kernel ran for this job.
        wait_s: seconds the layer was blocked in ``result``.
    """

    tau: torch.Tensor
    v_at_tau: torch.Tensor
    cf: Optional[torch.Tensor] = None
    retrieval_s: float = 0.0
    wait_s: float = 0.0
    cf_deferred: Optional[DeferredCounterfactuals] = None

    @property
    def has_cf(self) -> bool:
        return self.cf is not None or self.cf_deferred is not None

    def counterfactuals(self) -> Optional[torch.Tensor]:
        """The counterfactual destinations, waiting for deferred ones; None when they were not asked for."""
        return self.cf if self.cf_deferred is None else self.cf_deferred.wait()


class PendingResult(Protocol):
    """A submitted job; ``result`` is called once, with the layer's V symbols uint8 [B, T, R]."""

    def result(self, v_sym: torch.Tensor) -> LayerRetrieval: ...


class Retriever(Protocol):
    """Where a ROSA layer sends its symbols.

    ``streaming`` tells the branch whether positions arrive chunk by chunk (then its input options keep their
    streamed state in ``branch_state(layer_idx)``, and ``length`` / ``start`` describe the positions consumed
    so far and each row's left padding) or as whole sequences.
    """

    streaming: bool

    def submit(self, layer_idx: int, q_sym: torch.Tensor, k_sym: torch.Tensor, bits: int,
               want_cf: bool, reuse: bool = False) -> PendingResult:
        """Start retrieval of one layer's uint8 symbols [B, T, R]. ``want_cf``: compute the counterfactual
        destinations too (gradients reach Q/K/V). ``reuse``: the same layer will be recomputed on the same input
        before its backward (activation checkpointing), so a retriever may answer that second submit from this
        one's result instead of running the kernel again."""

    def end_forward(self) -> None:
        """Called by the decoder stack after its forward: work held back for the backward may start."""
