"""Result and buffer containers of the ROSA retrieval kernel (docs/retrieval.md §1, §6)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class RosaMatch:
    """Retrieval results for a batch of (row, route) pairs.

    Attributes:
        tau: int32 [B, R, T], destination time of every position, -1 = nothing retrieved.
        cf: int32 [B, R, NQ, bits] or None. For Q-run i of pair (b, r) and bit j, the destination
            time retrieved when bit j of the run's symbol is flipped (docs/retrieval.md §6; only the flipped
            entry is stored, the unflipped one equals tau at the run start), -1 = none. Rows
            i >= num_q_runs[b, r] are -1. NQ = max(num_q_runs), at least 1.
        num_q_runs: int32 [B, R], number of Q-runs of each pair.
        q_sym: uint8 [B, R, T], the query symbols, contiguous per pair.
        bits: bits per route (M).
    """

    tau: torch.Tensor
    cf: Optional[torch.Tensor]
    num_q_runs: torch.Tensor
    q_sym: torch.Tensor
    bits: int

    def q_run_id(self) -> torch.Tensor:
        """int32 [B, R, T]: index of the Q-run that contains each position."""
        q = self.q_sym
        change = torch.zeros(q.shape, dtype=torch.int32)
        if q.shape[-1] > 1:
            change[..., 1:] = (q[..., 1:] != q[..., :-1]).to(torch.int32)
        return torch.cumsum(change, dim=-1, dtype=torch.int32)

    def cf_tau(self) -> torch.Tensor:
        """int32 [B, R, T, bits, 2]: per-position counterfactual destination times (docs/retrieval.md §8.2).

        Entry [b, r, t, j, beta] is what position t's Q-run start would retrieve with bit j of its
        symbol forced to beta: the stored flipped result when beta differs from the bit, else tau
        at the run start.
        """
        if self.cf is None:
            raise ValueError("cf_tau() needs counterfactuals: call rosa_match(..., want_cf=True)")
        run_id = self.q_run_id().long()  # [B, R, T]
        B, R, T = self.tau.shape
        M = self.bits
        t = torch.arange(T).expand(B, R, T)
        starts = torch.zeros_like(t)
        is_start = torch.ones((B, R, T), dtype=torch.bool)
        if T > 1:
            is_start[..., 1:] = self.q_sym[..., 1:] != self.q_sym[..., :-1]
        # Start time of the run containing t: a running max of start positions.
        starts = torch.where(is_start, t, torch.zeros_like(t)).cummax(dim=-1).values
        tau_start = torch.gather(self.tau, 2, starts)  # [B, R, T]
        flipped = torch.gather(
            self.cf.reshape(B, R, -1, M), 2, run_id.unsqueeze(-1).expand(B, R, T, M)
        )  # [B, R, T, M]
        sym = torch.gather(self.q_sym, 2, starts).to(torch.int32)
        bit = (sym.unsqueeze(-1) >> torch.arange(M, dtype=torch.int32)) & 1  # [B, R, T, M]
        out = torch.empty((B, R, T, M, 2), dtype=torch.int32)
        same = tau_start.unsqueeze(-1).expand(B, R, T, M)
        out[..., 0] = torch.where(bit == 0, same, flipped)
        out[..., 1] = torch.where(bit == 1, same, flipped)
        return out


@dataclass
class RosaBuffers:
    """Preallocated (optionally pinned) output storage reused across ``rosa_match`` calls.

    Each field is a contiguous 1-D tensor of sufficient capacity (numel); ``rosa_match`` writes
    its results into the leading part and returns views of it, so the returned ``RosaMatch``
    aliases these buffers until the next call that uses them. ``cf`` grows automatically: when a
    call needs more counterfactual rows than it holds, a larger tensor (pinned if the old one
    was) replaces ``cf`` on this object. The other fields must hold at least B*R*T (tau, q_sym)
    and B*R (num_q_runs) elements, else ``rosa_match`` raises ValueError.

    Fields: tau int32, cf int32, q_sym uint8, num_q_runs int32.
    """

    tau: torch.Tensor
    cf: torch.Tensor
    q_sym: torch.Tensor
    num_q_runs: torch.Tensor

    @classmethod
    def allocate(cls, batch: int, routes: int, length: int, bits: int,
                 max_q_runs: Optional[int] = None, pin_memory: bool = False) -> "RosaBuffers":
        """Buffers for calls with B <= batch, R <= routes, T <= length.

        ``max_q_runs`` sizes ``cf`` (default ``length``, the worst case); smaller values save memory
        and grow on demand.
        """
        nq = length if max_q_runs is None else max(1, int(max_q_runs))
        pairs = batch * routes

        def make(n: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.empty(n, dtype=dtype, pin_memory=pin_memory)

        return cls(
            tau=make(pairs * length, torch.int32),
            cf=make(pairs * nq * bits, torch.int32),
            q_sym=make(pairs * length, torch.uint8),
            num_q_runs=make(pairs, torch.int32),
        )
