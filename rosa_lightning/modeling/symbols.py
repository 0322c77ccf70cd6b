"""Hard bits, symbol packing and run bookkeeping on the accelerator (docs/method.md §2.3, docs/pipeline.md §2).

Route r owns channels r*M .. r*M+M-1; bit m of a route's symbol is channel r*M+m (LSB first).
"""
from __future__ import annotations

import torch


def pack_symbols(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Threshold logits at 0 and pack each route's bits into one symbol.

    Args:
        z: logits [B, T, C] in the model dtype; the threshold is strict (0, -0, NaN give bit 0).
        bits: M, bits per route; C % M == 0.
    Returns:
        uint8 [B, T, R], R = C / M.
    """
    B, T, C = z.shape
    if C % bits:
        raise ValueError(f"hidden size {C} is not divisible by bits={bits}")
    weights = (1 << torch.arange(bits, device=z.device, dtype=torch.int32)).to(torch.uint8)
    b = (z > 0).view(B, T, C // bits, bits).to(torch.uint8)
    return (b * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(sym: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 symbols [..., R] -> bool bits [..., R*M] (channel r*M+m = bit m of route r)."""
    shifts = torch.arange(bits, device=sym.device, dtype=torch.uint8)
    out = (sym.unsqueeze(-1) >> shifts) & 1
    return out.reshape(*sym.shape[:-1], sym.shape[-1] * bits).bool()


def run_starts(sym: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run bookkeeping along the last (time) axis, computed on the device.

    Args:
        sym: uint8 [..., T] symbols of one stream per pair.
    Returns:
        (start, run_id): int64 [..., T]; ``start[t]`` is the first time of the run containing t
        and ``run_id[t]`` its index (0-based). Both are transient: only int16/int32 tensors are
        ever saved for backward.
    """
    T = sym.shape[-1]
    change = torch.ones(sym.shape, dtype=torch.bool, device=sym.device)
    if T > 1:
        change[..., 1:] = sym[..., 1:] != sym[..., :-1]
    t = torch.arange(T, device=sym.device).expand(sym.shape)
    start = torch.where(change, t, torch.zeros_like(t)).cummax(dim=-1).values
    run_id = change.cumsum(dim=-1) - 1
    return start, run_id
