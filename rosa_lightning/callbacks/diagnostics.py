"""``RosaGradNorms``: per-layer gradient norms of the ROSA parameters, logged during training.

The bit logits zq, zk, zv = u W^T are never stored (the branch recomputes them in its backward), so what is
logged is the norm of each projection's weight gradient, dL/dW = (dL/dz)^T u: zero exactly when no gradient
reaches that stream's logits. Keys: ``rosa_grad/l{i}_{q,k,v,e0,e1,out}`` for the ROSA layer with index i.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch

from rosa_lightning.modeling import rosa_layers
from rosa_lightning.modeling.sharding import full_tensor

STREAMS = {"q": "q_proj.weight", "k": "k_proj.weight", "v": "v_proj.weight", "e0": "e0", "e1": "e1",
           "out": "out_proj.weight"}


def rosa_grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """L2 norms of the current ``.grad`` of every ROSA layer's parameters (0.0 where a grad is None)."""
    out: dict[str, float] = {}
    rosa = getattr(model, "rosa_config", None)
    if rosa is None or not rosa.enabled:
        return out  # the branches are skipped: nothing to measure
    for layer in rosa_layers(model):
        i = layer.self_attn.layer_idx
        params = dict(layer.rosa.named_parameters())
        for short, name in STREAMS.items():
            g = params[name].grad
            # a sharded gradient's norm is a collective (every rank runs this hook, in the same order)
            out[f"l{i}_{short}"] = float(full_tensor(g.detach().float().norm())) if g is not None else 0.0
    return out


class RosaGradNorms(L.Callback):
    """Log ``rosa_grad/*`` (see module docstring) every ``log_every_n_steps`` optimizer steps."""

    def __init__(self, log_every_n_steps: int = 10) -> None:
        if int(log_every_n_steps) < 1:
            raise ValueError(f"RosaGradNorms.log_every_n_steps must be >= 1, got {log_every_n_steps}")
        self.log_every_n_steps = int(log_every_n_steps)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if trainer.global_step % self.log_every_n_steps:
            return
        norms = rosa_grad_norms(pl_module.model)
        if norms:
            pl_module.log_dict({f"rosa_grad/{k}": v for k, v in norms.items()}, on_step=True, on_epoch=False,
                               batch_size=1)
