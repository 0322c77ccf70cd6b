"""Per-layer diagnostics of the ROSA branches on synthetic recall tasks.

For every ROSA layer: how often a route retrieves at all (tau >= 0), and, at the positions that predict an answer,
how often the retrieved time is the slot that holds the answer. Tau is captured by a ``RecordingPipeline``
attached as the model's batch retriever, so the forward is exactly the one that training and evaluation run.

The answer's slot. An answer token a_t at position t is predicted at t-1. Its *binding occurrence* is the earliest
position s < t-1 where the same token followed the same preceding token (ids[s-1] = ids[t-1], ids[s] = ids[t]):
in MQAR the value right after the key in the pair section (keys occur in the filler only after it), in passkey the
digit in the needle. A route reads the answer when tau[t-1] is s (V computed from the token it reads) or s+1 (V
computed one position late, as induction from a K built from the previous token needs, docs/retrieval.md §R4).
"""
from __future__ import annotations

from typing import Optional

import torch

from experiments.harness.evaluate import batches
from rosa_lightning.modeling import attach_pipeline, rosa_layers
from rosa_lightning.retrieval import RetrievalPipeline
from rosa_lightning.retrieval.indices import values_at
from rosa_lightning.retrieval.seam import LayerRetrieval


class _RecordingHandle:
    def __init__(self, handle, key, records: dict) -> None:
        self._handle, self._key, self._records = handle, key, records

    def wait(self):
        tau, cf, retrieval_s, wait_s = self._handle.wait()
        self._records[self._key] = tau.detach().to("cpu", torch.int64)
        return tau, cf, retrieval_s, wait_s

    def result(self, v_sym):
        tau, cf, retrieval_s, wait_s = self.wait()
        return LayerRetrieval(tau=tau, v_at_tau=values_at(v_sym, tau), cf=cf, retrieval_s=retrieval_s, wait_s=wait_s)


class RecordingPipeline(RetrievalPipeline):
    """A ``RetrievalPipeline`` that keeps the last tau [B, R, T] (int64, CPU) of every layer in ``records``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.records: dict = {}

    def submit(self, layer_key, q_sym, k_sym, bits, want_cf, reuse=False):
        return _RecordingHandle(super().submit(layer_key, q_sym, k_sym, bits, want_cf, reuse), layer_key,
                                self.records)


def answer_sources(input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """int64 [B, T]: at each position t-1 that predicts an answer token t, the answer's binding occurrence s
    (see module docstring); -1 elsewhere and where the answer has no earlier occurrence."""
    B, T = input_ids.shape
    src = torch.full((B, T), -1, dtype=torch.int64)
    for b in range(B):
        ids = input_ids[b].tolist()
        first: dict[tuple[int, int], int] = {}
        for s in range(1, T):
            first.setdefault((ids[s - 1], ids[s]), s)
        for t in torch.nonzero(answer_mask[b]).flatten().tolist():
            s = first.get((ids[t - 1], ids[t]), t) if t >= 1 else t
            if s < t - 1:
                src[b, t - 1] = s
    return src


def _layer_stats(tau: torch.Tensor, src: torch.Tensor) -> dict[str, float]:
    """tau int64 [B, R, T]; src int64 [B, T] (-1 = not a query position)."""
    query = src >= 0  # [B, T]
    valid = tau >= 0
    s = src.unsqueeze(1)  # [B, 1, T]
    right = ((tau == s) | (tau == s + 1)) & query.unsqueeze(1)
    q = query.unsqueeze(1).expand_as(tau)
    n_query = int(query.sum())
    return {
        "valid_tau": float(valid.float().mean()),
        "valid_tau_at_queries": float(valid[q].float().mean()) if n_query else float("nan"),
        "right_slot": float(right[q].float().mean()) if n_query else float("nan"),
        "any_route_right": float(right.any(dim=1)[query].float().mean()) if n_query else float("nan"),
    }


@torch.no_grad()
def retrieval_diagnostics(module: torch.nn.Module, dataset, batch_size: int = 16,
                          max_batches: Optional[int] = 4, slots: bool = True) -> dict[str, dict[str, float]]:
    """Per ROSA layer (``"layer{i}"``): ``valid_tau`` (fraction of (row, route, position) with tau >= 0),
    ``valid_tau_at_queries``, ``right_slot`` (fraction of (row, route, query position) whose tau is the answer's
    slot) and ``any_route_right`` (fraction of query positions where at least one route retrieves it), pooled over
    the first ``max_batches`` batches of ``dataset``. ``slots=False`` (text without answers): ``valid_tau`` only.
    Empty for a model whose branches are off."""
    model = module.model
    if not model.rosa_config.enabled or not rosa_layers(model):
        return {}
    stack = model.model
    previous = None if stack.owns_pipeline else stack.retrieval_pipeline  # a lazy one is closed and made again
    recorder = RecordingPipeline(num_threads=1).start()
    sums: dict[str, dict[str, list]] = {}
    was_training = module.training
    module.eval()
    try:
        attach_pipeline(model, recorder)
        for batch in batches(dataset, batch_size, max_batches):
            recorder.records.clear()
            module(batch)
            src = answer_sources(batch["input_ids"], batch["answer_mask"]) if slots else None
            for key, tau in sorted(recorder.records.items()):
                stats = _layer_stats(tau, src) if slots else {"valid_tau": float((tau >= 0).float().mean())}
                acc = sums.setdefault(f"layer{key}", {})
                for name, value in stats.items():
                    acc.setdefault(name, []).append(value)
    finally:
        module.train(was_training)
        attach_pipeline(model, previous)
        recorder.close()
    return {layer: {k: sum(v) / len(v) for k, v in stats.items()} for layer, stats in sums.items()}


def grad_norms_on_batch(module: torch.nn.Module, batch: dict) -> dict[str, float]:
    """Per-layer ROSA gradient norms (``rosa_grad_norms``) of the training loss on one batch; grads are cleared
    before and after, parameters' ``requires_grad`` are those of the module's current stage."""
    from rosa_lightning.callbacks.diagnostics import rosa_grad_norms
    from rosa_lightning.modeling.losses import shifted_cross_entropy

    module.zero_grad(set_to_none=True)
    was_training = module.training
    module.train()
    try:
        loss, _ = shifted_cross_entropy(module(batch), batch["labels"])
        loss.backward()
        return rosa_grad_norms(module.model)
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was_training)
