"""Relaxed (soft-match) Q/K gradient of the ROSA branch: gradient option ``grad_mode="relaxed"``.

The forward stays exact (suffix-automaton retrieval, hard bits). Only the backward of the Q and K logits changes:
instead of counterfactual bit flips (docs/gradients.md §2.3-§2.6) it differentiates a soft single-symbol match over every
candidate position. Per pair (b, r), with soft bits ``sq = tanh(zq / 2)``, ``sk = tanh(zk / 2)`` (the expected
±1 value of a bit that is 1 with probability sigmoid(z)):

    a(t, s)  = sum_m sq[t, m] * sk[s, m]                agreement of query t with key s, in [-M, M]
    p(s | t) = softmax over s in [0, t-1] of beta * a(t, s)
    ysoft[t] = sum_s p(s | t) * delta * F[s + 1]        F = sigmoid(zv) ("soft") or 1[zv > 0] ("hard")

where s + 1 is the destination a match of key s leads to (the successor position; ``t = 0`` has no candidate).
The Q and K gradients are ``d(sum_t G[t] . ysoft[t]) / d(zq, zk)`` with ``G = dL/dy``; the V gradient and
e0/e1 stay those of the exact forward (docs/gradients.md §2.2 and §2.7). ``beta`` sets how sharply one mismatching bit
(score 2 lower) is discounted.

It models neither run compression nor longer contexts nor the "latest occurrence" rule; it is a smooth
surrogate that gives every Q and K bit a gradient towards keys whose successor carries useful values. Cost is
O(T^2 * M) per pair, computed in query blocks so that transient memory stays under ``max_elements`` floats:
a study-scale option (tiny models, T of a few thousand), not meant for 16k-token training on a CPU.
"""
from __future__ import annotations

import warnings

import torch

# multiply-adds of one relaxed backward above which a CPU run is warned about (minutes per layer and step)
CPU_WARN_MACS = 2e10


def relaxed_qk_grads(zq: torch.Tensor, zk: torch.Tensor, zv: torch.Tensor, grad_y: torch.Tensor,
                     delta: torch.Tensor, bits: int, beta: float = 1.0, field: str = "soft",
                     max_elements: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (grad_zq, grad_zk) [B, T, C] of the soft match described in the module doc.

    Args:
        zq, zk, zv, grad_y: [B, T, C] logits and G = dL/dy; C = R * bits.
        delta: e1 - e0 [C] (detached).
        beta: inverse temperature of the match (> 0).
        field: "soft" or "hard" value field.
        max_elements: bound on the [B, R, block, T] score tensor of one query block.
    """
    if not beta > 0:
        raise ValueError(f"relaxed_qk_grads: beta must be > 0, got {beta!r}")
    B, T, C = zq.shape
    M = bits
    R = C // M
    macs = 4.0 * B * R * T * T * M / 2  # scores + readout, forward and backward, causal half
    if zq.device.type == "cpu" and macs > CPU_WARN_MACS:
        warnings.warn(f"grad_mode='relaxed' at B={B}, T={T}, {R} routes costs ~{macs:.1e} multiply-adds per layer "
                      "and step on the CPU (O(T^2)); it is meant for small-T studies", RuntimeWarning, stacklevel=2)

    def pairs(x):  # [B, T, C] -> fp32 [B, R, T, M]
        return x.float().reshape(B, T, R, M).permute(0, 2, 1, 3)

    sq_all = torch.tanh(pairs(zq) / 2)
    sk_all = torch.tanh(pairs(zk) / 2)
    zv_p = pairs(zv)
    fv = torch.sigmoid(zv_p) if field == "soft" else (zv_p > 0).float()
    # the value reached through key s is at destination s + 1
    val = fv[:, :, 1:] * delta.float().view(1, R, 1, M)  # [B, R, T-1, M], row s = destination s + 1
    g = pairs(grad_y)
    d_sq = torch.zeros_like(sq_all)
    d_sk = torch.zeros_like(sk_all)
    block = max(1, min(T, max_elements // max(1, B * R * T)))
    pos = torch.arange(T, device=zq.device)
    for t0 in range(1, T, block):  # t = 0 has no candidate
        t1 = min(T, t0 + block)
        with torch.enable_grad():
            sq = sq_all[:, :, t0:t1].detach().requires_grad_(True)
            sk = sk_all[:, :, : t1 - 1].detach().requires_grad_(True)
            score = beta * torch.einsum("brtm,brsm->brts", sq, sk)
            causal = pos[: t1 - 1].view(1, -1) < pos[t0:t1].view(-1, 1)  # s <= t - 1
            p = torch.softmax(score.masked_fill(~causal, float("-inf")), dim=-1)
            ysoft = torch.einsum("brts,brsm->brtm", p, val[:, :, : t1 - 1])
            dq, dk = torch.autograd.grad((ysoft * g[:, :, t0:t1]).sum(), (sq, sk))
        d_sq[:, :, t0:t1] += dq
        d_sk[:, :, : t1 - 1] += dk
    # d tanh(z/2) / dz = (1 - tanh(z/2)^2) / 2
    gq = d_sq * (1 - sq_all * sq_all) / 2
    gk = d_sk * (1 - sk_all * sk_all) / 2

    def unpairs(x):
        return x.permute(0, 2, 1, 3).reshape(B, T, C)

    return unpairs(gq), unpairs(gk)
