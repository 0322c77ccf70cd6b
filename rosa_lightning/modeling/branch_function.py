"""The ROSA branch as one autograd Function: readout + output projection forward, docs/gradients.md §2 backward.

Why one fused Function: the backward needs zq, zk, zv, y, and per-position masks. Saving them
would cost 4 [B, T, C] activations per layer (256 MiB at Qwen3-1.7B, T = 16k, bf16). Instead
the Function saves only the branch input u (already saved by the attention projections, so
it costs nothing extra), the weights (parameters), and compact indices:

* tau      int16/int32 [B, R, T]      destination times, -1 = none;
* cf       int16/int32 [B, R, NQ, M]  flipped-bit destination per Q-run (docs/gradients.md §1);
* v_at_tau uint8 [B, R, T]            V symbol at tau (0 where none).

The backward recomputes the three logits with one matmul each (deterministic, same dtype as in
the forward, so the Q-run structure recomputed from sign(zq) matches the kernel's), and y.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .counterfactual import GradOptions, counterfactual_logit_grads, readout, readout_grads


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class RosaBranchFunction(torch.autograd.Function):
    """inj = readout(tau, v_at_tau, e0, e1) @ Wout^T, with the counterfactual backward.

    forward(u [B,T,C], wq, wk, wv, e0 [C], e1 [C], wout [C,C], tau, cf, v_at_tau, bits,
    options, logit_dtype) -> inj [B,T,C]. ``cf`` may be None when no gradient reaches Q/K/V
    (inference); ``logit_dtype`` is the dtype zq/zk/zv had in the forward.
    """

    @staticmethod
    def forward(ctx, u, wq, wk, wv, e0, e1, wout, tau, cf: Optional[torch.Tensor], v_at_tau,
                bits: int, options: GradOptions, logit_dtype: torch.dtype, u_kv: Optional[torch.Tensor] = None):
        y = readout(tau, v_at_tau, e0, e1, bits)
        inj = F.linear(y.to(wout.dtype), wout)
        ctx.bits, ctx.options, ctx.logit_dtype = bits, options, logit_dtype
        ctx.has_cf = cf is not None
        ctx.has_ukv = u_kv is not None
        saved = (u, wq, wk, wv, e0, e1, wout, tau, cf if cf is not None else tau, v_at_tau)
        ctx.save_for_backward(*saved, *((u_kv,) if u_kv is not None else ()))
        return inj

    @staticmethod
    def backward(ctx, grad_inj):
        """docs/gradients.md §2. With ``u_kv`` (input options, ``branch_inputs``) the K and V logits are recomputed from u_kv and the
        input gradient is split: u gets the Q part, u_kv the K and V parts. ``wq`` and ``wk`` may be one tensor
        (``qk_tied``): autograd then adds both weight gradients into it."""
        u, wq, wk, wv, e0, e1, wout, tau, cf, v_at_tau, *rest = ctx.saved_tensors
        u_kv = rest[0] if ctx.has_ukv else None
        bits = ctx.bits
        need = ctx.needs_input_grad
        grads = [None] * len(need)
        y = readout(tau, v_at_tau, e0, e1, bits)
        if need[6]:
            grads[6] = (_flat(grad_inj).t() @ _flat(y.to(grad_inj.dtype))).to(wout.dtype)
        grad_y = grad_inj @ wout.to(grad_inj.dtype)  # pass-through of G = Wout^T dL/dinj
        if need[4] or need[5]:
            g0, g1 = readout_grads(grad_y, tau, v_at_tau, bits)
            grads[4], grads[5] = g0.to(e0.dtype), g1.to(e1.dtype)
        if not any(need[:4]) and not (u_kv is not None and need[13]):
            return tuple(grads)
        if not ctx.has_cf:
            raise RuntimeError("ROSA backward needs counterfactuals: the forward ran without cf "
                               "(retrieval called with want_cf=False) but Q/K/V require gradients")
        dt = ctx.logit_dtype
        uq = u.to(dt)
        ukv = uq if u_kv is None else u_kv.to(dt)
        with torch.no_grad():
            zq = F.linear(uq, wq.to(dt))
            zk, zv = F.linear(ukv, wk.to(dt)), F.linear(ukv, wv.to(dt))
        delta = (e1 - e0).detach()
        gz = counterfactual_logit_grads(zq, zk, zv, tau, cf, grad_y, delta, bits, ctx.options, e0=e0.detach())
        del zq, zk, zv
        # the docs/gradients.md §2 results are fp32, cast to the logits' dtype; the projections' backward then runs
        # in that dtype, exactly as autograd of F.linear would.
        gz = [g.to(dt) for g in gz]
        for slot, w, g, x in zip((1, 2, 3), (wq, wk, wv), gz, (uq, ukv, ukv)):
            if need[slot]:
                grads[slot] = (_flat(g).t() @ _flat(x)).to(w.dtype)
        if u_kv is None:
            if need[0]:
                grads[0] = (gz[0] @ wq.to(dt) + gz[1] @ wk.to(dt) + gz[2] @ wv.to(dt)).to(u.dtype)
        else:
            if need[0]:
                grads[0] = (gz[0] @ wq.to(dt)).to(u.dtype)
            if need[13]:
                grads[13] = (gz[1] @ wk.to(dt) + gz[2] @ wv.to(dt)).to(u_kv.dtype)
        return tuple(grads)
