"""Fixed-hash teacher of the ROSA branches' Q logits (a warm start / auxiliary loss for learning).

A ROSA branch retrieves usefully as an induction head when its Q symbol is a function of the current token and its
K symbol the same function of the previous token (``kv_shift`` + ``qk_tied``). On the token embedding (layer 0) a
random projection already is such a hash; deeper in the network the branch input mixes in the context and the
symbols stop identifying the token, and the counterfactual gradient does not recover that structure by itself
(``experiments/branch_learning``). The teacher supplies it: every token id gets C pseudo-random target bits
(an integer hash of (seed, token id, channel), computed on the fly, no table), and

    teacher_loss = mean over ROSA layers of BCE-with-logits(zq[b, t, :], bits(input_ids[b, t]))

pulls each layer's Q logits towards that hash. Gradients reach the Q projection and, through u, the layers below.
Used as a warm start (teacher loss alone for some steps) and as an auxiliary term of the training loss.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from .parameters import rosa_layers

_MASK = 0xFFFFFFFF


def hash_bits(ids: torch.Tensor, channels: int, seed: int = 0) -> torch.Tensor:
    """float32 [..., channels] of pseudo-random 0/1 bits, a fixed function of (seed, token id, channel)."""
    if channels < 1:
        raise ValueError(f"hash_bits: channels must be >= 1, got {channels}")
    c = torch.arange(channels, device=ids.device, dtype=torch.int64)
    x = (ids.to(torch.int64).unsqueeze(-1) * 0x9E3779B1 + c * 0x85EBCA77 + (seed & _MASK) * 0xC2B2AE3D) & _MASK
    for mult in (0x2C1B3C6D, 0x297A2D39):  # xor-shift-multiply rounds (32-bit, wrapped)
        x = ((x ^ (x >> 15)) * mult) & _MASK
    x = x ^ (x >> 16)
    return ((x >> 7) & 1).to(torch.float32)


class HashTeacher:
    """Teacher loss of every ROSA layer of ``model`` (module doc). Call ``loss(input_ids)`` after a forward of
    ``input_ids`` (it reads the Q inputs that forward recorded); ``close()`` removes the hooks.

    Args:
        model: a ROSA-patched model (``rosa_lightning.modeling``).
        seed: selects the hash.
    """

    def __init__(self, model: nn.Module, seed: int = 0) -> None:

        self.layers = rosa_layers(model)
        if not self.layers:
            raise ValueError("HashTeacher: the model has no ROSA layer")
        self.seed = int(seed)
        self._u_q: Dict[int, torch.Tensor] = {}  # the branch computes zq without a graph; keep Q's input
        self._hooks = [layer.rosa.q_proj.register_forward_pre_hook(self._recorder(i))
                       for i, layer in enumerate(self.layers)]

    def _recorder(self, i: int):
        def hook(_mod, args):
            self._u_q[i] = args[0]
        return hook

    def loss(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scalar fp32 teacher loss of the last forward, which must have been run on ``input_ids``."""
        if len(self._u_q) != len(self.layers):
            raise RuntimeError("HashTeacher.loss: run the model's forward on these input_ids first")
        shapes = {tuple(u.shape[:2]) for u in self._u_q.values()}
        if shapes != {tuple(input_ids.shape)}:
            raise ValueError(f"HashTeacher.loss: input_ids {tuple(input_ids.shape)} do not match the last "
                             f"forward's [B, T] {sorted(shapes)}")
        target = hash_bits(input_ids, self.layers[0].rosa.q_proj.weight.shape[0], self.seed)  # same for every layer
        total = 0.0
        for i, u in self._u_q.items():
            z = self.layers[i].rosa.q_proj(u).float()
            total = total + F.binary_cross_entropy_with_logits(z, target.to(z.device))
        self._u_q.clear()
        return total / len(self.layers)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._u_q.clear()
