"""Readout and counterfactual-gradient math of the ROSA branch (docs/method.md §2.5, docs/gradients.md §2).

Layouts: logits and gradients are [B, T, C] with C = R*M (channel r*M+m = bit m of route r);
retrieval indices are per pair, [B, R, T] (``tau``) and [B, R, NQ, M] (``cf``: destination time
when bit j of Q-run i's symbol is flipped, -1 = none).

The backward never materialises [B, R, T, M, M]: it makes M+1 passes of gather -> dot -> scatter
over flattened (pair, time) rows, each pass holding [B*R*T, M] fp32 transients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .relaxed import relaxed_qk_grads
from .symbols import pack_symbols, run_starts, unpack_bits


K_CREDITS = ("reference", "matched")
GRAD_MODES = ("published", "relaxed")


def check_positive_number(name: str, value) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int or float > 0 (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


@dataclass(frozen=True)
class GradOptions:
    """Named choices of the counterfactual gradient; the defaults are docs/gradients.md §2 exactly.

    Attributes:
        field: "soft" uses F = sigmoid(zv) as the value field for Q and K, "hard" uses 1[zv > 0].
        mode: "published" (A1-A4 of docs/gradients.md §3) or "relaxed": the Q and K gradients of a soft single-symbol
            match over every earlier position (``relaxed.py``; V and e0/e1 stay as published, ``k_credit``
            and ``e0_term`` do not apply). New variants get a new name here and a branch in
            ``counterfactual_logit_grads``; the default never changes.
        relax_beta: inverse temperature of the "relaxed" soft match (> 0).
        k_credit: which K bits receive the credit of a flipped-Q destination omega = s_{e+1}:
            "reference" the start of the successor run e+1 (published, docs/gradients.md §A3), "matched" the
            start of the matched run e, whose symbol the flipped query bit has to agree with.
        e0_term: False = published (docs/gradients.md §A1: only the Delta*F part of a destination's output is
            counted). True: a destination's output is counted whole, e0 + Delta*F, so a flip that changes
            validity (a retrieval appears or disappears) is credited with the e0 part too. Q and K only.
    """

    field: str = "soft"
    mode: str = "published"
    k_credit: str = "reference"
    e0_term: bool = False
    relax_beta: float = 1.0

    def __post_init__(self) -> None:
        if self.field not in ("soft", "hard"):
            raise ValueError(f"GradOptions.field must be 'soft' or 'hard', got {self.field!r}")
        if self.k_credit not in K_CREDITS:
            raise ValueError(f"GradOptions.k_credit must be one of {K_CREDITS}, got {self.k_credit!r}")
        if not isinstance(self.e0_term, bool):
            raise ValueError(f"GradOptions.e0_term must be a bool, got {self.e0_term!r}")
        if self.mode not in GRAD_MODES:
            raise ValueError(f"GradOptions.mode must be one of {GRAD_MODES}, got {self.mode!r}")
        check_positive_number("GradOptions.relax_beta", self.relax_beta)
        object.__setattr__(self, "relax_beta", float(self.relax_beta))  # 1 and 1.0 are the same option


def _valid_channels(tau: torch.Tensor, bits: int) -> torch.Tensor:
    """bool [B, T, C]: route r's channels are valid at t when tau[b, r, t] >= 0."""
    return (tau >= 0).transpose(1, 2).repeat_interleave(bits, dim=-1)


def readout(tau: torch.Tensor, v_at_tau: torch.Tensor, e0: torch.Tensor, e1: torch.Tensor,
            bits: int) -> torch.Tensor:
    """Branch output y (docs/method.md §2.5), in the dtype of e0.

    Args:
        tau: int [B, R, T], destination times, -1 = no retrieval (the route outputs exactly 0).
        v_at_tau: uint8 [B, R, T], the V symbol at tau (bit m = channel r*M+m), 0 where tau < 0.
        e0, e1: [C] value embeddings for bit 0 / bit 1.
    Returns:
        y [B, T, C] = valid * (e0 + (e1 - e0) * vbit).
    """
    vbit = unpack_bits(v_at_tau.transpose(1, 2), bits).to(e0.dtype)
    valid = _valid_channels(tau, bits).to(e0.dtype)
    return valid * (e0 + (e1 - e0) * vbit)


def readout_grads(grad_y: torch.Tensor, tau: torch.Tensor, v_at_tau: torch.Tensor,
                  bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 [C] gradients of e0 and e1 from grad_y [B, T, C] (docs/gradients.md §2.7)."""
    g = grad_y.float()
    vbit = unpack_bits(v_at_tau.transpose(1, 2), bits)
    valid = _valid_channels(tau, bits)
    g1 = torch.where(valid & vbit, g, 0.0)
    g0 = torch.where(valid & ~vbit, g, 0.0)
    return g0.sum(dim=(0, 1)), g1.sum(dim=(0, 1))


def _to_pairs(x: torch.Tensor, bits: int) -> torch.Tensor:
    """[B, T, C] -> fp32 [B*R*T, M], rows ordered (b, r, t)."""
    B, T, C = x.shape
    return x.float().view(B, T, C // bits, bits).permute(0, 2, 1, 3).reshape(-1, bits)


def _from_pairs(x: torch.Tensor, B: int, T: int, bits: int) -> torch.Tensor:
    """[B*R*T, M] (rows (b, r, t)) -> [B, T, C]."""
    R = x.shape[0] // (B * T)
    return x.view(B, R, T, bits).permute(0, 2, 1, 3).reshape(B, T, R * bits)


def _dsigmoid(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 - s)


def _k_credit_rows(zk: torch.Tensor, base: torch.Tensor, bits: int, k_credit: str):
    """Map destination rows (pair offset + time of a K-run start s_{e+1}) to the rows that get K credit.

    "reference": the destination itself. "matched": the start s_e of the run before it, i.e. of the run
    containing time s_{e+1} - 1 (destinations are successor runs, so s_{e+1} >= 1 where it matters; rows of
    invalid destinations carry zero credit and map anywhere in their pair).
    """
    if k_credit == "reference":
        return lambda rows: rows
    k_start, _ = run_starts(pack_symbols(zk, bits).transpose(1, 2))  # [B, R, T]
    prev_start = torch.cat([k_start[..., :1], k_start[..., :-1]], dim=-1).reshape(-1)  # start of run at t-1
    return lambda rows: base + prev_start.index_select(0, rows)


def counterfactual_logit_grads(zq: torch.Tensor, zk: torch.Tensor, zv: torch.Tensor,
                               tau: torch.Tensor, cf: torch.Tensor, grad_y: torch.Tensor,
                               delta: torch.Tensor, bits: int,
                               options: GradOptions = GradOptions(),
                               e0: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """Gradients of the loss w.r.t. the Q, K, V logits (docs/gradients.md §2), all arithmetic in fp32.

    Args:
        zq, zk, zv: logits [B, T, C] as used by the forward (their signs give the symbols).
        tau: int [B, R, T], forward destination times (-1 = none).
        cf: int [B, R, NQ, M], flipped-bit destination time per Q-run and bit (-1 = none).
        grad_y: dL/dy [B, T, C].
        delta: e1 - e0 [C], detached.
        e0: [C], detached; needed only with ``options.e0_term``.
    Returns:
        (grad_zq, grad_zk, grad_zv), fp32 [B, T, C].
    """
    B, T, C = zq.shape
    M = bits
    R = C // M
    pairs = B * R
    dev = zq.device
    base = (torch.arange(pairs, device=dev) * T).repeat_interleave(T)  # [P*T] row offset of each pair
    theta = _to_pairs(grad_y, M) * delta.float().view(1, R, 1, M).expand(B, R, T, M).reshape(-1, M)
    zv_p = _to_pairs(zv, M)

    # V: scatter theta over destination times (theta is not masked for Q and K, only here).
    tau_l = tau.reshape(-1).long()
    valid = tau_l >= 0
    idx_tau = base + tau_l.clamp(min=0)
    s_v = torch.zeros_like(theta).index_add_(0, idx_tau, theta * valid.unsqueeze(1))
    grad_v = _dsigmoid(zv_p) * s_v
    del s_v
    if options.mode == "relaxed":
        gq, gk = relaxed_qk_grads(zq, zk, zv, grad_y, delta, M, options.relax_beta, options.field)
        return gq, gk, _from_pairs(grad_v, B, T, M)

    field = torch.sigmoid(zv_p) if options.field == "soft" else (zv_p > 0).float()
    del zv_p
    ge0 = None
    if options.e0_term:  # sum_m G[t, m] * e0[m]: the e0 part of any valid destination's contribution
        if e0 is None:
            raise ValueError("GradOptions.e0_term needs e0")
        ge0 = (_to_pairs(grad_y, M) * e0.float().view(1, R, 1, M).expand(B, R, T, M).reshape(-1, M)).sum(dim=1)

    # Q-runs from the signs of zq; the unflipped destination of every t is tau at its run start.
    q_sym = pack_symbols(zq, M).transpose(1, 2)  # [B, R, T]
    start, run_id = run_starts(q_sym)
    tau_start = torch.gather(tau.long(), 2, start).reshape(-1)
    idx_same = base + tau_start.clamp(min=0)
    d_same = (theta * field.index_select(0, idx_same)).sum(dim=1) * (tau_start >= 0)
    if ge0 is not None:
        d_same = d_same + ge0 * (tau_start >= 0)
    sign = 1.0 - 2.0 * unpack_bits(q_sym.reshape(-1, 1), M).float()  # [P*T, M]: +1 if bit 0
    nq = cf.shape[2]
    run_rows = (torch.arange(pairs, device=dev) * nq).repeat_interleave(T) + run_id.reshape(-1)
    cf_rows = cf.reshape(pairs * nq, M).index_select(0, run_rows)  # [P*T, M], compact dtype
    del start, run_id, run_rows, q_sym

    credit = _k_credit_rows(zk, base, M, options.k_credit)
    credit_same = credit(idx_same)
    grad_q = torch.empty(M, pairs * T, device=dev)
    acc_k = torch.zeros(M, pairs * T, device=dev)
    for j in range(M):
        w = cf_rows[:, j].long()
        idx = base + w.clamp(min=0)
        d_flip = (theta * field.index_select(0, idx)).sum(dim=1) * (w >= 0)
        if ge0 is not None:
            d_flip = d_flip + ge0 * (w >= 0)
        sj = sign[:, j]
        grad_q[j] = sj * (d_flip - d_same)
        # K credit at run starts: +D for the beta=1 destination, -D for beta=0.
        acc_k[j].index_add_(0, credit(idx), sj * d_flip)
        acc_k[j].index_add_(0, credit_same, -sj * d_same)
    grad_q = _dsigmoid(_to_pairs(zq, M)) * grad_q.t()
    grad_k = _dsigmoid(_to_pairs(zk, M)) * acc_k.t()
    return (_from_pairs(grad_q, B, T, M), _from_pairs(grad_k, B, T, M), _from_pairs(grad_v, B, T, M))
