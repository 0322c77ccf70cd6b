"""Stored V symbols of one ROSA layer, read back at the retrieved times (docs/method.md §2.5, docs/generation.md §2)."""
from __future__ import annotations

import torch


class ValueStore:
    """uint8 V symbols [B, R, T] of every position so far, in a buffer that doubles when full.

    One byte per (route, position): tau only ever points at K-run starts, so storing only those
    would save at most this byte; it is small next to the automaton (see ``RosaStream.nbytes``).
    """

    def __init__(self, batch: int, routes: int) -> None:
        self._buf = torch.zeros((batch, routes, 0), dtype=torch.uint8)
        self.length = 0

    def reset(self) -> None:
        """Forget the symbols (the buffer is kept for the next sequence)."""
        self.length = 0

    def append(self, v_sym: torch.Tensor) -> None:
        """Add the symbols of new positions, uint8 [B, T_new, R] on the CPU."""
        B, n, R = v_sym.shape
        need = self.length + n
        if need > self._buf.shape[2]:
            grown = torch.zeros((B, R, max(need, 2 * self._buf.shape[2], 64)), dtype=torch.uint8)
            grown[:, :, :self.length] = self._buf[:, :, :self.length]
            self._buf = grown
        self._buf[:, :, self.length:need] = v_sym.transpose(1, 2)
        self.length = need

    def rollback(self, k: int) -> None:
        """Forget the symbols of the last ``k`` positions."""
        if k < 0 or k > self.length:
            raise ValueError(f"cannot roll back {k} positions of a store holding {self.length}")
        self.length -= int(k)

    def gather(self, tau: torch.Tensor) -> torch.Tensor:
        """uint8 [B, R, T']: the symbol at time tau[b, r, t] (int32 [B, R, T']), 0 where tau = -1."""
        idx = tau.long().clamp(min=0)
        out = torch.gather(self._buf[:, :, :self.length], 2, idx)
        return out.masked_fill_(tau < 0, 0)

    def nbytes(self) -> int:
        """Bytes allocated (capacity, not only the used part)."""
        return self._buf.numel()
