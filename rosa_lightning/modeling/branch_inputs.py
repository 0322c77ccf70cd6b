"""Options for what the ROSA branch's Q/K/V projections read (learning options; off by default).

The published branch (docs/method.md §2.4) projects the same normalised input u[t] into Q, K and V. Three options change the
projections' inputs, never the retrieval semantics (docs/retrieval.md) or the readout (docs/method.md §2.5):

- ``kv_shift``: K and V read the previous position, k[t] = u[t-1]·Wkᵀ and v[t] = u[t-1]·Wvᵀ, while Q reads u[t].
  The first position of a sequence reads a zero vector (its K and V logits are exactly 0, so all its K and V
  bits are 0). With it, the "K and V carry the previous token, Q the current one" induction structure of docs/retrieval.md
  §7 (E13) is available without the model having to learn it: a K-run whose symbol equals the query's is
  followed by the run that starts at the next position, whose V bits describe that next position.
- ``qk_tied``: K is computed with Q's weight (``q_proj.weight``); ``k_proj.weight`` stays in the state dict
  (same keys as the published layout) but is not used and gets no gradient. Without ``kv_shift`` this makes
  Q == K and nothing is retrieved (docs/retrieval.md §R4); with it, k[t] = q-projection of u[t-1], so the query of a
  token and the key written right after the same token are the same symbol, and they cannot drift apart.
- ``center_u``: remove the component of u that is constant along the sequence before the projections (Q, K and
  V read the centred input). "causal_mean": u[t] − mean(u[0..t]) (causal; position 0 becomes exactly 0).
  Computed in float64 and cast back, so the streamed (generation) path reproduces the full forward.

All three are differentiable ordinary tensor operations before the fused branch Function; the counterfactual
gradient of the logits flows back through them to u.

Streaming (``rosa_cache``, generation): the shift needs the last input of the previous chunk and the centring the
running sum of the inputs; both are kept per ROSA layer in ``rosa_cache.branch_state(layer_idx)``. Left-padded rows
behave like their unpadded sequence: the first real position reads a zero vector under ``kv_shift`` and padding
never enters the running mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

CENTER_MODES = ("off", "causal_mean")


@dataclass(frozen=True)
class InputOptions:
    """What the projections read; the defaults are the published branch (u for Q, K and V)."""

    kv_shift: bool = False
    qk_tied: bool = False
    center_u: str = "off"

    def __post_init__(self) -> None:
        if not isinstance(self.kv_shift, bool) or not isinstance(self.qk_tied, bool):
            raise ValueError("InputOptions.kv_shift and qk_tied must be bools")
        if self.center_u not in CENTER_MODES:
            raise ValueError(f"InputOptions.center_u must be one of {CENTER_MODES}, got {self.center_u!r}")

    @property
    def changes_inputs(self) -> bool:
        return self.kv_shift or self.center_u != "off"


def _stream_positions(rosa_cache, u: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(past, start): positions consumed before this chunk, and each row's left-padding offset int64 [B]."""
    n = u.shape[1]
    past = int(rosa_cache.length) - n
    start = rosa_cache.start
    if start is None:
        start = torch.zeros(u.shape[0], dtype=torch.int64)
    return past, start.to(u.device)


def center_causal(u: torch.Tensor, state: Optional[dict] = None, past: int = 0,
                  start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """u[t] − mean(u[start..t]) per row, float64 arithmetic, result in u's dtype.

    Without ``state``: the full sequence (start = 0). With ``state`` (streaming): ``state["sum"]`` float64 [B, 1, C]
    is the sum of the row's real inputs before this chunk; it is updated in place. ``past`` is the absolute time of
    the chunk's first column, ``start`` int64 [B] the first real position of each row.
    """
    B, T, C = u.shape
    ud = u.double()
    t = torch.arange(T, device=u.device) + past
    if state is None:
        csum = ud.cumsum(dim=1)
        count = (t + 1).to(torch.float64).view(1, T, 1)
    else:
        real = (t.view(1, T) >= start.view(B, 1)).unsqueeze(-1)  # [B, T, 1]
        ud = torch.where(real, ud, 0.0)
        prev = state.get("sum")
        if prev is None:
            prev = torch.zeros(B, 1, C, dtype=torch.float64, device=u.device)
        csum = torch.cat([prev, ud], dim=1).cumsum(dim=1)[:, 1:]
        state["sum"] = csum[:, -1:].detach().clone()
        count = (t.view(1, T) - start.view(B, 1) + 1).clamp(min=1).to(torch.float64).unsqueeze(-1)
    return (ud - csum / count).to(u.dtype)


def shift_previous(u: torch.Tensor, state: Optional[dict] = None, past: int = 0,
                   start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[t] = u[t-1]; the first position of each sequence reads zeros.

    Streaming: ``state["prev"]`` [B, 1, C] is the last input of the previous chunk (updated in place); positions at
    or before a row's first real position ``start[b]`` read zeros.
    """
    B, T, C = u.shape
    if state is None:
        return torch.cat([u.new_zeros(B, 1, C), u[:, :-1]], dim=1)
    prev = state.get("prev")
    if prev is None:
        prev = u.new_zeros(B, 1, C)
    out = torch.cat([prev.to(u.dtype), u[:, :-1]], dim=1)
    state["prev"] = u[:, -1:].detach().clone()
    t = torch.arange(T, device=u.device) + past
    first = (t.view(1, T) <= start.view(B, 1)).unsqueeze(-1)
    return torch.where(first, 0.0, out).to(u.dtype)


def branch_inputs(u: torch.Tensor, options: InputOptions, layer_idx: int = 0,
                  rosa_cache=None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(u_q, u_kv): the inputs of the Q projection and of the K/V projections.

    ``u_kv`` is None when K and V read the same input as Q (no shift); then the caller uses ``u_q`` for all three.
    """
    if not options.changes_inputs:
        return u, None
    state = past = start = None
    if rosa_cache is not None:
        state = rosa_cache.branch_state(layer_idx)
        past, start = _stream_positions(rosa_cache, u)
    kw = {} if state is None else {"past": past, "start": start}
    if options.center_u == "causal_mean":
        u = center_causal(u, state.setdefault("center", {}) if state is not None else None, **kw)
    if not options.kv_shift:
        return u, None
    return u, shift_previous(u, state.setdefault("shift", {}) if state is not None else None, **kw)
