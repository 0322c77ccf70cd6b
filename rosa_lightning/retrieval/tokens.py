"""Token channel (docs/retrieval.md §9): single-stream ROSA over raw token ids, batch and streaming.

For every row x of token ids, ``y[t] = x[j* + 1]`` where j* < t is the latest end of the longest
suffix of ``x[0..t]`` that also ends earlier; ``y[t] = -1`` when ``x[t]`` never occurred before.

The native kernel (``_tokens``) keeps one suffix automaton per row with hashed transitions (any
non-negative int64 id) and a link-cut tree for latest end positions, so periodic text costs
O(log T) per token instead of O(T). This module validates, allocates and converts; it is the
only importer of the extension.

Padding. ``start[b]`` is the index of row b's first real token (left padding) and ``lengths[b]``
the index one past its last (right padding). Only ``ids[b, start[b]:lengths[b]]`` is matched,
as one stream from its first token; every other position gets -1 and its id is never read.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from . import _tokens
from .budget import resolve_threads

# States are int32 indices and a row holds at most 2 * tokens + 1 of them.
MAX_ROW_TOKENS = 2**30 - 2

_ID_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy view of a numpy array or CPU torch tensor, or a TypeError naming ``name``."""
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got a tensor on {x.device}")
        return x.detach().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or a CPU torch tensor, got {type(x).__name__}")


def _token_ids(ids: Any, name: str, rank: int) -> np.ndarray:
    """Validated C-contiguous int64 copy-or-view of an id array of the given rank."""
    arr = _to_numpy(ids, name)
    if arr.dtype not in _ID_DTYPES:
        raise TypeError(f"{name} must have dtype int32 or int64, got {arr.dtype}")
    if arr.ndim != rank:
        shape = "[B, T]" if rank == 2 else "[B]"
        raise ValueError(f"{name} must have rank {rank} {shape}, got shape {tuple(arr.shape)}")
    if rank == 2 and arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one position (T >= 1), got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _row_bounds(value: Any, name: str, batch: int, n: int, default: int) -> np.ndarray:
    """int64 [batch] per-row bound in [0, n] from None, an int, or a [batch] integer array."""
    if value is None:
        return np.full(batch, default, dtype=np.int64)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        arr = np.full(batch, int(value), dtype=np.int64)
    else:
        arr = _to_numpy(value, name) if isinstance(value, (torch.Tensor, np.ndarray)) else np.asarray(value)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
        if arr.shape != (batch,):
            raise ValueError(f"{name} must have shape [B] = ({batch},), got {tuple(arr.shape)}")
        arr = np.ascontiguousarray(arr, dtype=np.int64)
    if batch and (arr.min() < 0 or arr.max() > n):
        raise ValueError(f"{name} must lie in [0, T] = [0, {n}], got values in [{arr.min()}, {arr.max()}]")
    return arr


def _span(ids: np.ndarray, start: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-row [lo, hi) of real tokens; checks that real ids are non-negative."""
    batch, n = ids.shape
    lo = _row_bounds(start, "start", batch, n, 0)
    hi = _row_bounds(lengths, "lengths", batch, n, n)
    if np.any(lo > hi):
        b = int(np.argmax(lo > hi))
        raise ValueError(f"start must not exceed lengths, got start[{b}]={lo[b]} > lengths[{b}]={hi[b]}")
    if start is None and lengths is None:
        bad = batch > 0 and ids.min() < 0
    else:
        pos = np.arange(n, dtype=np.int64)
        real = (pos[None, :] >= lo[:, None]) & (pos[None, :] < hi[:, None])
        bad = bool(np.any(real & (ids < 0)))
    if bad:
        raise ValueError("ids must be non-negative token ids at every real (non-padding) position")
    return lo, hi


def _threads(num_threads: Optional[int]) -> int:
    """None = every core of the process, as for the retrieval kernel; an int within the kernels' thread limit."""
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer))
                                    or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    return resolve_threads(None if num_threads is None else int(num_threads))


def rosa_next_token(
    ids: Any,
    num_threads: Optional[int] = None,
    *,
    start: Any = None,
    lengths: Any = None,
    _plain: bool = False,
) -> torch.Tensor:
    """Token-channel outputs for a batch of rows.

    Args:
        ids: int64 or int32 [B, T] token ids (numpy or CPU torch), non-negative at real positions.
        num_threads: OpenMP threads over rows (None = every core this process may use); the result
            does not depend on it.
        start: optional int or int [B], index of each row's first real token (left padding).
        lengths: optional int or int [B], index one past each row's last real token.
        _plain: testing switch: use the O(depth) latest-end walk instead of the link-cut tree.

    Returns:
        torch.int64 [B, T]: the token that followed the latest earlier occurrence of the longest
        repeated suffix, -1 = none (first occurrence, or a padding position).
    """
    arr = _token_ids(ids, "ids", 2)
    if arr.shape[1] > MAX_ROW_TOKENS:
        raise ValueError(f"ids has T={arr.shape[1]} positions, more than the kernel's limit {MAX_ROW_TOKENS}")
    lo, hi = _span(arr, start, lengths)
    out = np.empty(arr.shape, dtype=np.int64)
    _tokens.next_token(arr, lo, hi, out, _threads(num_threads), bool(_plain))
    return torch.from_numpy(out)


class TokenStream:
    """Per-row online token channel: feeding a sequence in any chunks gives ``rosa_next_token``.

    Each row keeps its automaton (O(tokens) memory, see :meth:`nbytes`) between calls. Prefill
    is one :meth:`scan` of the prompt; decoding is :meth:`step` (or ``scan`` with Tc = 1).
    """

    def __init__(self, batch: int, num_threads: Optional[int] = None, *, _plain: bool = False) -> None:
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        self.batch = int(batch)
        self.num_threads = _threads(num_threads)
        self._rows = _tokens.TokenRows(self.batch, bool(_plain))
        self._length = 0

    @property
    def length(self) -> int:
        """Positions scanned since the last reset (padding positions included)."""
        return self._length

    def row_tokens(self) -> torch.Tensor:
        """int64 [B]: real tokens fed to each row since the last reset."""
        return torch.from_numpy(self._rows.row_tokens())

    def scan(self, ids_chunk: Any, start: Any = None, lengths: Any = None, journal: bool = False) -> torch.Tensor:
        """Feed the next chunk int64/int32 [B, Tc]; returns int64 [B, Tc] outputs, -1 = none.

        ``start`` / ``lengths`` (int or [B], relative to the chunk) mark padding as in
        :func:`rosa_next_token`; positions outside are skipped and get -1. ``journal``: keep an undo journal
        of this chunk (no padding allowed then), so that :meth:`rollback` can remove its last positions.
        """
        arr = _token_ids(ids_chunk, "ids_chunk", 2)
        if arr.shape[0] != self.batch:
            raise ValueError(f"ids_chunk must have B={self.batch} rows, got shape {tuple(arr.shape)}")
        if journal and (start is not None or lengths is not None):
            raise ValueError("a journaled scan takes no padding (start / lengths): every position is a real token")
        lo, hi = _span(arr, start, lengths)
        fed = self._rows.row_tokens()
        if int((fed + (hi - lo)).max()) > MAX_ROW_TOKENS:
            raise ValueError(f"a row would exceed the kernel's limit of {MAX_ROW_TOKENS} tokens")
        out = np.empty(arr.shape, dtype=np.int64)
        self._rows.scan(arr, lo, hi, out, self.num_threads, bool(journal))
        self._length += arr.shape[1]
        return torch.from_numpy(out)

    @property
    def rollback_positions(self) -> int:
        """How many of the last scanned positions :meth:`rollback` can still remove."""
        return int(self._rows.journal_positions)

    def rollback(self, k: int) -> None:
        """Remove the last ``k`` positions of the last scan, which must have been journaled: every row is then
        exactly as if it had been fed only the kept prefix."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        self._rows.rollback(int(k))
        self._length -= int(k)

    def commit(self) -> None:
        """Discard the undo journal."""
        self._rows.commit()

    def last_match(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For each row's last fed token: (end int64 [B], length int32 [B]), the latest earlier end j* of the
        longest suffix of the row that also ended before, and that suffix's length Λ (docs/retrieval.md §9.1);
        end -1 and length 0 when there is none. The output of that token was ``row[end + 1]``."""
        ends, lens = self._rows.last_match()
        return torch.from_numpy(ends), torch.from_numpy(lens)

    def step(self, ids_t: Any) -> torch.Tensor:
        """Feed one token per row, int64/int32 [B]; returns int64 [B]."""
        arr = _token_ids(ids_t, "ids_t", 1)
        if arr.shape[0] != self.batch:
            raise ValueError(f"ids_t must have shape [B] = ({self.batch},), got {tuple(arr.shape)}")
        return self.scan(arr[:, None])[:, 0]

    def reset(self) -> None:
        """Forget every row's stream (buffers are kept for reuse)."""
        self._rows.reset()
        self._length = 0

    def nbytes(self) -> int:
        """Bytes of automaton state currently allocated for all rows (capacity, not just used)."""
        return int(self._rows.nbytes())
