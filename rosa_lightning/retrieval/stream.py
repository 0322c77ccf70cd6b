"""``RosaStream``: per (row, route) online retrieval state for incremental decoding (docs/retrieval.md §10)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import _native
from .budget import resolve_threads
from .validation import MAX_LENGTH, as_symbols, check_bits


class RosaStream:
    """Online ROSA retrieval for ``batch`` rows x ``routes`` routes, one automaton per pair.

    Uses the same native automaton code as ``rosa_match``, so any split of a sequence into chunks
    (prefill = one chunk, decoding = chunks of one) gives exactly ``rosa_match``'s tau.

    The state is O(T) per pair (docs/generation.md §4): the automaton over the K-run string and the K-run
    start times; ``nbytes()`` reports it.

    Rollback (docs/generation.md §8): ``scan(..., journal=True)`` keeps an undo journal of the chunk, and
    ``rollback(k)`` then removes its last k positions exactly (the next scans give the tau of a stream fed only
    the kept prefix). Any later scan discards the journal; an unjournaled scan records nothing.
    """

    def __init__(self, batch: int, routes: int, bits: int, num_threads: Optional[int] = None,
                 *, _mode: int = _native.MODE_HYBRID) -> None:
        for name, value in (("batch", batch), ("routes", routes)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.batch, self.routes = int(batch), int(routes)
        self.bits = check_bits(bits)
        self.num_threads = resolve_threads(num_threads)
        self._mode = int(_mode)
        self._state = _native.StreamState(self.batch * self.routes, self.bits, self._mode)
        self._length = 0

    @property
    def length(self) -> int:
        """Positions consumed so far (the absolute time of the next position)."""
        return self._length

    def reset(self) -> None:
        """Forget everything: the next scan starts a new sequence at time 0."""
        self._state.reset(np.zeros(self.batch * self.routes, dtype=np.int64))
        self._length = 0

    def scan(self, q, k, start=None, journal: bool = False) -> torch.Tensor:
        """Consume a chunk and return its destination times.

        Args:
            q, k: symbols [B, Tc, R] (numpy or CPU torch, uint8/int32/int64), Tc >= 1.
            start: optional int [B], only on the first chunk after construction or ``reset``:
                index in this chunk of each row's first real token (left padding). Earlier
                positions are skipped (tau -1) and times stay in the caller's coordinate.
            journal: keep an undo journal of this chunk so that ``rollback`` can remove its last positions.

        Returns:
            tau: int32 [B, R, Tc], absolute times counted from the start of the stream, -1 = none.
        """
        qa = as_symbols(q, "q", self.bits)
        ka = as_symbols(k, "k", self.bits)
        if qa.shape != ka.shape:
            raise ValueError(f"q and k must have the same shape, got {qa.shape} and {ka.shape}")
        B, Tc, R = qa.shape
        if (B, R) != (self.batch, self.routes):
            raise ValueError(f"q must have shape [{self.batch}, Tc, {self.routes}], got {qa.shape}")
        if Tc == 0:
            raise ValueError("q and k must hold at least one position (Tc >= 1)")
        if self._length + Tc > MAX_LENGTH:
            raise ValueError(f"stream length would exceed the kernel's limit {MAX_LENGTH}")
        if start is not None:
            self._apply_start(start, Tc)
        tau = torch.empty((B, R, Tc), dtype=torch.int32)
        self._state.scan(qa, ka, tau.numpy(), self.num_threads, bool(journal))
        self._length += Tc
        return tau

    @property
    def rollback_positions(self) -> int:
        """How many of the last scanned positions ``rollback`` can still remove (0 after an unjournaled scan)."""
        return int(self._state.journal_positions)

    def rollback(self, k: int) -> None:
        """Remove the last ``k`` positions of the last scan, which must have been journaled."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        self._state.rollback(int(k))
        self._length -= int(k)

    def commit(self) -> None:
        """Discard the undo journal (nothing can be rolled back until the next journaled scan)."""
        self._state.commit()

    def journal_nbytes(self) -> int:
        """Bytes held for rollback: the undo journals and position marks."""
        return int(self._state.journal_nbytes())

    def step(self, q_t, k_t) -> torch.Tensor:
        """One position: q_t, k_t [B, R] -> tau int32 [B, R]."""
        for name, x in (("q_t", q_t), ("k_t", k_t)):
            if getattr(x, "ndim", None) != 2:
                raise ValueError(f"{name} must have shape [B, R], got {getattr(x, 'shape', type(x))}")
        return self.scan(q_t[:, None, :], k_t[:, None, :])[:, :, 0]

    def nbytes(self) -> int:
        """Bytes of persistent state in use (automaton states and K-run starts of every pair)."""
        return int(self._state.nbytes())

    def _apply_start(self, start, Tc: int) -> None:
        if self._length != 0:
            raise ValueError("start is only allowed on the first chunk of a stream")
        s = np.asarray(start.numpy() if isinstance(start, torch.Tensor) else start)
        if s.shape != (self.batch,) or s.dtype.kind not in "iu":
            raise ValueError(f"start must be an int array of shape [{self.batch}], got {s.shape} {s.dtype}")
        if s.min() < 0 or s.max() > Tc:
            raise ValueError(f"start values must lie in [0, {Tc}], got [{s.min()}, {s.max()}]")
        self._state.reset(np.repeat(s.astype(np.int64), self.routes))
