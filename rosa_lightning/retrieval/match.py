"""``rosa_match``: the batched retrieval of docs/retrieval.md for every (row, route) pair."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from . import _native
from .result import RosaBuffers, RosaMatch
from .budget import resolve_threads
from .indices import index_dtype
from .validation import MAX_LENGTH, as_symbols, check_bits

_LAYOUTS = ("BTR", "BRT")


def _take(buf: Optional[torch.Tensor], name: str, n: int, dtype: torch.dtype, shape) -> torch.Tensor:
    """A view of the leading n elements of a caller buffer, or a fresh tensor."""
    if buf is None:
        return torch.empty(shape, dtype=dtype)
    if buf.dtype != dtype or not buf.is_contiguous() or buf.device.type != "cpu":
        raise ValueError(f"out.{name} must be a contiguous CPU {dtype} tensor")
    if buf.numel() < n:
        raise ValueError(f"out.{name} holds {buf.numel()} elements, {n} needed")
    return buf.reshape(-1)[:n].view(shape)


def _check_length(T: int) -> None:
    if T == 0:
        raise ValueError("q and k must hold at least one position (T >= 1)")
    if T > MAX_LENGTH:
        raise ValueError(f"sequence length T={T} exceeds the kernel's limit {MAX_LENGTH}")


def rosa_match(q, k, bits: int, num_threads: Optional[int] = None, *, want_cf: bool = True,
               layout: str = "BTR", out: Optional[RosaBuffers] = None,
               _mode: int = _native.MODE_HYBRID) -> RosaMatch:
    """Exact ROSA retrieval (docs/retrieval.md §3 semantics) for every (row, route) pair.

    Args:
        q, k: query and key symbols, numpy arrays or CPU torch tensors of dtype uint8, int32 or
            int64, shape [B, T, R] (layout="BTR") or [B, R, T] (layout="BRT"), values in
            [0, 2**bits). Non-contiguous input is copied.
        bits: bits per route M, 1..8.
        num_threads: kernel threads over pairs; None = all cores in this process's affinity.
            Results do not depend on it.
        want_cf: also compute the per-Q-run flipped-bit counterfactuals (training).
        layout: "BTR" or "BRT", the axis order of q and k.
        out: optional ``RosaBuffers`` to write into (e.g. pinned); results are views of it.

    Returns:
        RosaMatch with tau int32 [B, R, T], cf int32 [B, R, NQ, bits] (or None), num_q_runs
        int32 [B, R], q_sym uint8 [B, R, T].

    The kernel's per-thread arenas (about 1.1 kB per position of T and thread at bits = 8, 0.1 kB at bits = 4) are
    kept between calls and shared with ``match_narrow``; ``rosa_lightning.retrieval._native.release_arenas()``
    frees them.
    """
    bits = check_bits(bits)
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'BTR' or 'BRT', got {layout!r}")
    qa = as_symbols(q, "q", bits)
    ka = as_symbols(k, "k", bits)
    if qa.shape != ka.shape:
        raise ValueError(f"q and k must have the same shape, got {qa.shape} and {ka.shape}")
    threads = resolve_threads(num_threads)
    btr = layout == "BTR"
    B, R, T = (qa.shape[0], qa.shape[2], qa.shape[1]) if btr else qa.shape
    _check_length(T)
    if out is not None and not isinstance(out, RosaBuffers):
        raise TypeError(f"out must be a RosaBuffers, got {type(out).__name__}")

    pairs = B * R
    q_sym = _take(out and out.q_sym, "q_sym", pairs * T, torch.uint8, (B, R, T))
    nqr = _take(out and out.num_q_runs, "num_q_runs", pairs, torch.int32, (B, R))
    tau = _take(out and out.tau, "tau", pairs * T, torch.int32, (B, R, T))
    if pairs == 0:
        return RosaMatch(tau=tau, cf=torch.full((B, R, 1, bits), -1, dtype=torch.int32) if want_cf else None,
                         num_q_runs=nqr, q_sym=q_sym, bits=bits)
    _native.gather_queries(qa, btr, q_sym.numpy(), nqr.numpy(), threads)
    nq = max(1, int(nqr.max()))
    cf = None
    if want_cf:
        need = pairs * nq * bits
        if out is not None and out.cf.numel() < need:
            out.cf = torch.empty(need, dtype=torch.int32, pin_memory=out.cf.is_pinned())
        cf = _take(out and out.cf, "cf", need, torch.int32, (B, R, nq, bits))
        cf_flat = cf.view(-1).numpy()
    else:
        cf_flat = np.empty(1, dtype=np.int32)
    _native.match(q_sym.numpy(), ka, btr, bits, tau.numpy(), cf_flat, nq, bool(want_cf), threads, int(_mode))
    return RosaMatch(tau=tau, cf=cf, num_q_runs=nqr, q_sym=q_sym, bits=bits)


def _fresh(name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def match_narrow(q: torch.Tensor, k: torch.Tensor, bits: int, num_threads: Optional[int] = None, *,
                 want_tau: bool = True, want_cf: bool = True, dtype: Optional[torch.dtype] = None,
                 alloc: Optional[Callable[[str, tuple, torch.dtype], torch.Tensor]] = None,
                 _mode: int = _native.MODE_HYBRID) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The retrieval the pipeline runs: ``rosa_match``'s tau and cf, written by the kernel's threads straight into
    buffers of the narrow index dtype, with no extra pass over the inputs or the results in Python.

    Args:
        q, k: uint8 CPU tensors [B, R, T] (layout "BRT"), contiguous per pair (others are copied).
        bits: bits per route M, 1..8; every symbol must be below 2**bits (checked inside the kernel's passes).
        num_threads: kernel threads (None = every core of the process, as ``rosa_match``).
        want_tau, want_cf: which results to write (the deferred counterfactual job asks for cf only).
        dtype: torch.int16 or torch.int32 (default ``index_dtype(T)``).
        alloc: ``alloc(name, shape, dtype)`` returns the buffer for "tau" or "cf" (e.g. the pipeline's reused pinned
            buffers); default: fresh tensors.

    Returns:
        (tau [B, R, T] or None, cf [B, R, NQ, bits] or None), values equal to ``rosa_match(q, k, bits,
        layout="BRT")``'s converted to ``dtype``; NQ = the largest number of Q-runs of a pair.
    """
    bits = check_bits(bits)
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 3 or x.device.type != "cpu":
            raise ValueError(f"{name} must be a uint8 CPU tensor [B, R, T], got "
                             f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    B, R, T = q.shape
    _check_length(T)
    dtype = index_dtype(T) if dtype is None else dtype
    if dtype not in (torch.int16, torch.int32) or (dtype == torch.int16 and T > 32768):
        raise ValueError(f"dtype must be torch.int16 (T <= 32768) or torch.int32, got {dtype} at T={T}")
    alloc = alloc or _fresh
    threads = resolve_threads(num_threads)
    qa, ka = q.contiguous().numpy(), k.contiguous().numpy()
    nqr = np.empty((B, R), dtype=np.int32)
    top = _native.count_q_runs(qa, nqr, threads)
    if top >= (1 << bits):
        raise ValueError(f"q symbols must lie in [0, {1 << bits}) for bits={bits}, got a symbol {top}")
    nq = max(1, int(nqr.max())) if B * R else 1
    tau = alloc("tau", (B, R, T), dtype) if want_tau else None
    cf = alloc("cf", (B, R, nq, bits), dtype) if want_cf else None
    for name, buf, shape in (("tau", tau, (B, R, T)), ("cf", cf, (B, R, nq, bits))):
        if buf is not None and (buf.dtype != dtype or tuple(buf.shape) != shape or not buf.is_contiguous()
                                or buf.device.type != "cpu"):
            raise ValueError(f"alloc returned a {name} buffer {tuple(buf.shape)} {buf.dtype}, expected a contiguous "
                             f"CPU {dtype} tensor of shape {shape}")
    if B * R == 0:
        return tau, cf
    empty = np.empty(1, dtype=np.int16 if dtype == torch.int16 else np.int32)
    bad = _native.match_into(qa, ka, bits, tau.view(-1).numpy() if tau is not None else empty,
                             cf.view(-1).numpy() if cf is not None else empty, nq, bool(want_tau), bool(want_cf),
                             threads, int(_mode))
    if bad is not None:
        pair, symbol = bad
        raise ValueError(f"k symbols must lie in [0, {1 << bits}) for bits={bits}, got a symbol {symbol} "
                         f"(row {pair // R}, route {pair % R})")
    return tau, cf
