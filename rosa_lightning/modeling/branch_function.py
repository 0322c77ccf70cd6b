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

Arguments: the tensors that receive gradients (u, u_kv, the weights, e0, e1) positionally, as autograd needs,
and everything else in two small objects: the layer's ``LayerRetrieval`` (the seam's result) and a ``BranchSpec``
(bits, the gradient options, the logits' dtype). Gradients are computed by name (``INPUTS``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from rosa_lightning.retrieval.seam import LayerRetrieval

from .branch_inputs import shift_previous
from .counterfactual import GradOptions, counterfactual_logit_grads, readout, readout_grads

# The differentiable inputs of ``RosaBranchFunction.apply``, in order; the retrieval result and the spec follow.
INPUTS = ("u", "u_kv", "wq", "wk", "wv", "e0", "e1", "wout")


@dataclass(frozen=True)
class BranchSpec:
    """What one branch call needs besides tensors.

    Attributes:
        bits: M.
        options: the counterfactual gradient's options.
        logit_dtype: the dtype zq/zk/zv had in the forward (the backward recomputes them in it).
        k_shifted_q: K's logits are Q's of the previous position (``kv_shift`` + ``qk_tied``, a full forward): the
            backward takes zk from zq and merges K's logit gradient into Q's (``_projection_grads``).
    """

    bits: int
    options: GradOptions
    logit_dtype: torch.dtype
    k_shifted_q: bool = False


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class RosaBranchFunction(torch.autograd.Function):
    """inj = readout(tau, v_at_tau, e0, e1) @ Wout^T, with the counterfactual backward.

    apply(u [B,T,C], u_kv [B,T,C] or None, wq, wk, wv, e0 [C], e1 [C], wout [C,C], found: LayerRetrieval,
    spec: BranchSpec) -> inj [B,T,C]. ``u_kv`` is the K/V projections' input when it differs from u (input
    options), else None. ``found.cf`` may be None when no gradient reaches Q/K/V (inference).
    """

    @staticmethod
    def forward(ctx, u, u_kv: Optional[torch.Tensor], wq, wk, wv, e0, e1, wout, found: LayerRetrieval,
                spec: BranchSpec):
        y = readout(found.tau, found.v_at_tau, e0, e1, spec.bits)
        inj = F.linear(y.to(wout.dtype), wout)
        ctx.spec = spec
        ctx.has_cf = found.has_cf
        ctx.cf_deferred = found.cf_deferred  # computed off the critical path: the backward waits for it
        ctx.has_ukv = u_kv is not None
        cf = found.cf if found.cf is not None else found.tau
        ctx.save_for_backward(u, u_kv if u_kv is not None else u, wq, wk, wv, e0, e1, wout, found.tau, cf,
                              found.v_at_tau)
        return inj

    @staticmethod
    def backward(ctx, grad_inj):
        """docs/gradients.md §2. With ``u_kv`` (input options, ``branch_inputs``) the K and V logits are recomputed from
        u_kv and the input gradient is split: u gets the Q part, u_kv the K and V parts. ``wq`` and ``wk`` may be one
        tensor (``qk_tied``): autograd then adds both weight gradients into it."""
        u, u_kv, wq, wk, wv, e0, e1, wout, tau, cf, v_at_tau = ctx.saved_tensors
        if not ctx.has_ukv:
            u_kv = None
        bits = ctx.spec.bits
        need = dict(zip(INPUTS, ctx.needs_input_grad))
        grads: dict[str, torch.Tensor] = {}
        y = readout(tau, v_at_tau, e0, e1, bits)
        if need["wout"]:
            grads["wout"] = (_flat(grad_inj).t() @ _flat(y.to(grad_inj.dtype))).to(wout.dtype)
        grad_y = grad_inj @ wout.to(grad_inj.dtype)  # pass-through of G = Wout^T dL/dinj
        if need["e0"] or need["e1"]:
            g0, g1 = readout_grads(grad_y, tau, v_at_tau, bits)
            grads["e0"], grads["e1"] = g0.to(e0.dtype), g1.to(e1.dtype)
        if any(need[k] for k in ("u", "u_kv", "wq", "wk", "wv")):
            if not ctx.has_cf:
                raise RuntimeError("ROSA backward needs counterfactuals: the forward ran without cf "
                                   "(retrieval called with want_cf=False) but Q/K/V require gradients")
            if ctx.cf_deferred is not None:
                cf = ctx.cf_deferred.wait()
            grads.update(_projection_grads(u, u_kv, wq, wk, wv, e0, e1, tau, cf, grad_y, ctx.spec, need))
        return tuple(grads.get(name) for name in INPUTS) + (None, None)


def _projection_grads(u, u_kv, wq, wk, wv, e0, e1, tau, cf, grad_y, spec: BranchSpec, need: dict) -> dict:
    """Gradients of u, u_kv and the Q/K/V weights from the counterfactual logit gradients (docs/gradients.md §2)."""
    dt = spec.logit_dtype
    uq = u.to(dt)
    ukv = uq if u_kv is None else u_kv.to(dt)
    with torch.no_grad():
        zq = F.linear(uq, wq.to(dt))
        zk = shift_previous(zq) if spec.k_shifted_q else F.linear(ukv, wk.to(dt))
        zv = F.linear(ukv, wv.to(dt))
    delta = (e1 - e0).detach()
    gz = counterfactual_logit_grads(zq, zk, zv, tau, cf, grad_y, delta, spec.bits, spec.options, e0=e0.detach())
    del zq, zk, zv
    if spec.k_shifted_q:
        return _projection_grads_k_shifted(uq, ukv, u, u_kv, wq, wv, gz, dt, need)
    # the docs/gradients.md §2 results are fp32, cast to the logits' dtype; the projections' backward then runs
    # in that dtype, exactly as autograd of F.linear would.
    gz = [g.to(dt) for g in gz]
    grads = {}
    for name, w, g, x in zip(("wq", "wk", "wv"), (wq, wk, wv), gz, (uq, ukv, ukv)):
        if need[name]:
            grads[name] = (_flat(g).t() @ _flat(x)).to(w.dtype)
    if u_kv is None:
        if need["u"]:
            grads["u"] = (gz[0] @ wq.to(dt) + gz[1] @ wk.to(dt) + gz[2] @ wv.to(dt)).to(u.dtype)
    else:
        if need["u"]:
            grads["u"] = (gz[0] @ wq.to(dt)).to(u.dtype)
        if need["u_kv"]:
            grads["u_kv"] = (gz[1] @ wk.to(dt) + gz[2] @ wv.to(dt)).to(u_kv.dtype)
    return grads


def _projection_grads_k_shifted(uq, ukv, u, u_kv, wq, wv, gz, dt, need: dict) -> dict:
    """``_projection_grads`` when zk[t] = zq[t-1]: K's logit gradient at t belongs to Q's row t-1 (its input there is
    uq[t-1] and its weight Wq), so gq + (gk moved one row back) goes through one weight-gradient matmul and one
    input-gradient matmul, and u_kv gets only V's part. The sum is taken in fp32 (or the logits' dtype where that is
    wider), before the cast to the logits' dtype. The ``wk`` slot gets no gradient of its own: it is ``wq``, and
    all of K's share is in ``wq``'s."""
    gq, gk, gv = gz
    acc = torch.promote_types(gq.dtype, dt)  # fp32, or the logits' dtype where that is wider
    gqk = gq.to(acc, copy=True)
    gqk[:, :-1] += gk[:, 1:].to(acc)
    gqk, gv = gqk.to(dt), gv.to(dt)
    grads = {}
    if need["wq"] or need["wk"]:
        grads["wq" if need["wq"] else "wk"] = (_flat(gqk).t() @ _flat(uq)).to(wq.dtype)
    if need["wv"]:
        grads["wv"] = (_flat(gv).t() @ _flat(ukv)).to(wv.dtype)
    if need["u"]:
        grads["u"] = (gqk @ wq.to(dt)).to(u.dtype)
    if need["u_kv"]:
        grads["u_kv"] = (gv @ wv.to(dt)).to(u_kv.dtype)
    return grads
