"""Time indices of retrieval results: their narrow dtype and gathers along time (docs/pipeline.md §2)."""
from __future__ import annotations

import torch


def index_dtype(length: int) -> torch.dtype:
    """Smallest signed dtype that holds times -1 .. length-1 (int16 up to T = 32768, else int32)."""
    return torch.int16 if length <= 32768 else torch.int32


def gather_time(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """x[b, r, clamp(tau)] for x [B, R, T] and tau int [B, R, T']; callers mask tau < 0 themselves."""
    idx = tau.long().clamp_(min=0)
    return torch.gather(x, -1, idx)


def values_at(v_sym: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """uint8 [B, R, T']: the V symbol at time tau for v_sym uint8 [B, T, R] and tau int [B, R, T'] (0 where tau < 0)."""
    return torch.where(tau >= 0, gather_time(v_sym.transpose(1, 2), tau), 0).to(torch.uint8)
