"""Batch retrieval: asynchronous CPU retrieval over whole sequences for ROSA layers (docs/pipeline.md).

The batch implementation of the retrieval seam (``seam.py``): ``submit`` returns a ``RetrievalHandle`` whose
``result(v_sym)`` is the layer's ``LayerRetrieval``.

Per call: the layer's Q/K symbols (uint8 [B, T, R]) are transposed to [B, R, T] on the device;
on CUDA a per-layer side stream (created once) waits on the compute stream, copies them into
reused pinned host buffers and records an event. A worker thread waits on that event and runs
``match_narrow`` (the kernel releases the GIL), whose threads write tau and cf in int16/int32 straight into the
layer's reused pinned buffers (fresh tensors on the CPU, which autograd keeps). Meanwhile
the main thread computes zv and attention. ``RetrievalHandle.wait`` then returns device tensors
(non-blocking H2D copies on the compute stream) plus the timings.

Buffer reuse rule (docs/pipeline.md §2): host buffers belong to one layer; the next job of that layer only
touches them after its own D2H event, and the side stream waits on the compute stream first, so
every H2D copy that read them earlier has completed.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Optional, Union

import torch

from .budget import kernel_threads
from .indices import index_dtype, values_at
from .match import match_narrow
from .seam import LayerRetrieval
from .worker import CRITICAL, DEFERRED, DaemonWorker


class _LayerSlot:
    """Per-layer stream, event and reusable host buffers."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.event = torch.cuda.Event() if self.cuda else None
        self._host: dict[str, torch.Tensor] = {}
        self.pending_cf: Optional["DeferredCf"] = None  # the last deferred job, which reads the q/k buffers

    def host(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """A host tensor of ``shape`` (pinned on CUDA) backed by a buffer that grows on demand."""
        n = 1
        for s in shape:
            n *= s
        buf = self._host.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = torch.empty(max(n, 1), dtype=dtype, pin_memory=self.cuda)
            self._host[name] = buf
        return buf[:n].view(shape)


class RetrievalTimeout(TimeoutError):
    """A retrieval job that did not finish within the pipeline's ``wait_timeout_s``."""


def _await(future: Future, timeout_s: Optional[float], layer_key, on_timeout: Optional[Callable[[], None]]):
    """``future.result`` with the pipeline's timeout, re-raising worker exceptions here."""
    try:
        return future.result(timeout_s)
    except FutureTimeout:
        if on_timeout is not None:
            on_timeout()
        raise RetrievalTimeout(
            f"the CPU retrieval job of ROSA layer {layer_key} did not finish within {timeout_s:g} s "
            f"(callbacks.retrieval_runtime.wait_timeout_s): the retrieval kernel hangs or gets no CPU time. "
            f"Raise the timeout if one layer's retrieval legitimately takes longer") from None


class DeferredCf:
    """The counterfactual destinations of one layer, computed by a deferred job (``seam.DeferredCounterfactuals``).

    ``wait()`` blocks until the job is done, then returns cf on the layer's device and tells ``on_wait`` (set by
    the branch) the seconds it blocked and the job's kernel seconds (``retrieval_s``).
    """

    def __init__(self, future: Future, device: torch.device, layer_key, timeout_s, on_timeout) -> None:
        self._future, self._device, self._key = future, device, layer_key
        self._timeout_s, self._on_timeout = timeout_s, on_timeout
        self._cf: Optional[torch.Tensor] = None
        self.retrieval_s = 0.0
        self.on_wait: Optional[Callable[[float], None]] = None

    def done(self) -> bool:
        return self._future.done()

    def join(self) -> None:
        """Wait for the job without fetching its result (nothing is timed or copied)."""
        _await(self._future, self._timeout_s, self._key, self._on_timeout)

    def wait(self) -> torch.Tensor:
        if self._cf is None:
            t0 = time.perf_counter()
            _, cf, self.retrieval_s = _await(self._future, self._timeout_s, self._key, self._on_timeout)
            waited = time.perf_counter() - t0
            self._cf = cf.to(self._device, non_blocking=True) if self._device.type != "cpu" else cf
            if self.on_wait is not None:
                self.on_wait(waited, self.retrieval_s)
        return self._cf


class RetrievalHandle:
    """A retrieval job in flight: ``result(v_sym)`` -> ``LayerRetrieval`` (the seam), ``wait()`` -> (tau, cf,
    retrieval_s, wait_s).

    tau: int16/int32 [B, R, T] on the symbols' device; cf: same dtype [B, R, NQ, M], or None when not asked for or
    deferred (then ``cf_deferred`` holds them).
    """

    def __init__(self, future: Future, device: torch.device, layer_key=None, timeout_s: Optional[float] = None,
                 on_timeout: Optional[Callable[[], None]] = None, cf_deferred: Optional[DeferredCf] = None) -> None:
        self._future = future
        self._device = device
        self._layer_key = layer_key
        self._timeout_s = timeout_s
        self._on_timeout = on_timeout
        self.cf_deferred = cf_deferred
        self._done: Optional[tuple] = None

    def wait(self):
        if self._done is not None:  # a kept result answered again (activation checkpointing)
            return self._done
        t0 = time.perf_counter()
        tau, cf, retrieval_s = _await(self._future, self._timeout_s, self._layer_key, self._on_timeout)
        wait_s = time.perf_counter() - t0
        if self._device.type != "cpu":
            tau = tau.to(self._device, non_blocking=True)
            cf = cf.to(self._device, non_blocking=True) if cf is not None else None
        self._done = (tau, cf, retrieval_s, wait_s)
        return self._done

    def result(self, v_sym: torch.Tensor) -> LayerRetrieval:
        """Wait for the job; the V symbols uint8 [B, T, R] of the same layer give ``v_at_tau``."""
        tau, cf, retrieval_s, wait_s = self.wait()
        return LayerRetrieval(tau=tau, v_at_tau=values_at(v_sym, tau), cf=cf, retrieval_s=retrieval_s, wait_s=wait_s,
                              cf_deferred=self.cf_deferred)


class _KeptResult:
    """A result kept for the recompute of the same layer under activation checkpointing."""

    def __init__(self, q_sym: torch.Tensor, k_sym: torch.Tensor, bits: int, handle: RetrievalHandle) -> None:
        self.q_sym, self.k_sym, self.bits, self.handle = q_sym, k_sym, bits, handle

    def answers(self, q_sym: torch.Tensor, k_sym: torch.Tensor, bits: int) -> bool:
        """Whether this result is the retrieval of these symbols (tau and cf are functions of them and bits)."""
        return (bits == self.bits and q_sym.shape == self.q_sym.shape and q_sym.device == self.q_sym.device
                and torch.equal(q_sym, self.q_sym) and torch.equal(k_sym, self.k_sym))


class _ReusedHandle:
    """A kept result handed out again: no kernel run, no time counted."""

    def __init__(self, handle: RetrievalHandle) -> None:
        self._handle = handle

    def wait(self):
        tau, cf, _, _ = self._handle.wait()
        return tau, cf, 0.0, 0.0

    def result(self, v_sym: torch.Tensor) -> LayerRetrieval:
        tau, cf, _, _ = self.wait()
        return LayerRetrieval(tau=tau, v_at_tau=values_at(v_sym, tau), cf=cf, cf_deferred=self._handle.cf_deferred)


class RetrievalPipeline:
    """Owns the retrieval worker thread, per-layer streams and host buffers.

    Use as a context manager or call ``start()``/``close()`` explicitly (a Lightning Callback
    owns one per fit). ``submit`` starts the pipeline lazily. A copy or a pickle is a new, stopped pipeline with
    the same settings (threads cannot be copied), so a model holding one can be deep-copied and pickled.

    Args:
        num_threads: kernel threads, "auto" (``budget.kernel_threads``) or an int >= 1.
        local_world_size, reserved_threads: inputs of the "auto" budget (ranks on the node, cores kept for the
            rank's main thread).
        match_fn: a retrieval function with the signature of ``rosa_match`` (tests count or break calls with it);
            default None: ``match.match_narrow``, the same results written by the kernel's threads straight
            into the narrow index dtype (into the layer's reused pinned buffers on CUDA), no extra pass in Python.
        wait_timeout_s: the longest ``RetrievalHandle.wait`` blocks before raising ``RetrievalTimeout``
            (None = forever).
        defer_counterfactuals: compute the counterfactual destinations in a second, lower-priority job, so a
            layer's forward waits only for tau and its backward for the rest (docs/pipeline.md §4). "auto" (the
            default) defers on accelerators, where the CPU is otherwise idle in the backward, and not on CPU
            ranks, whose cores the backward uses; True / False force it. Results are identical either way; the
            deferred job runs the kernel once more (it recomputes tau), so deferral costs CPU time.
    """

    def __init__(self, num_threads: Union[str, int] = "auto", *, local_world_size: int = 1,
                 reserved_threads: int = 1, match_fn: Optional[Callable] = None,
                 wait_timeout_s: Optional[float] = 600.0,
                 defer_counterfactuals: Union[bool, str] = "auto") -> None:
        if wait_timeout_s is not None and (isinstance(wait_timeout_s, bool) or not wait_timeout_s > 0):
            raise ValueError(f"wait_timeout_s must be None or a number of seconds > 0, got {wait_timeout_s!r}")
        self.wait_timeout_s = None if wait_timeout_s is None else float(wait_timeout_s)
        if defer_counterfactuals not in (True, False, "auto"):
            raise ValueError(f"defer_counterfactuals must be True, False or 'auto', got {defer_counterfactuals!r}")
        self.defer_counterfactuals = defer_counterfactuals
        self._hung = False
        self.num_threads = kernel_threads(num_threads, local_world=local_world_size, cpu_reserved=reserved_threads)
        self._match_fn = match_fn
        self._executor: Optional[DaemonWorker] = None
        self._slots: dict[tuple, _LayerSlot] = {}
        self._kept: dict = {}
        self.reused = 0  # submits answered from a kept result
        self._lock = threading.Lock()

    streaming = False  # the seam: whole sequences, not chunks

    def start(self) -> "RetrievalPipeline":
        with self._lock:
            if self._executor is None:
                self._executor = DaemonWorker("rosa-retrieval")
        return self

    def close(self) -> None:
        """Stop the worker after its queued jobs; after a timed-out job, without waiting for it."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(timeout=0.0 if self._hung else None)
                self._executor = None
            self._slots.clear()
            self._kept.clear()

    @property
    def running(self) -> bool:
        return self._executor is not None

    def __getstate__(self) -> dict:
        return {"num_threads": self.num_threads, "wait_timeout_s": self.wait_timeout_s, "match_fn": self._match_fn,
                "defer_counterfactuals": self.defer_counterfactuals}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["num_threads"], match_fn=state["match_fn"], wait_timeout_s=state["wait_timeout_s"],
                      defer_counterfactuals=state.get("defer_counterfactuals", "auto"))

    def __deepcopy__(self, memo) -> "RetrievalPipeline":
        return RetrievalPipeline(self.num_threads, match_fn=self._match_fn, wait_timeout_s=self.wait_timeout_s,
                                 defer_counterfactuals=self.defer_counterfactuals)

    def defers(self, device: torch.device) -> bool:
        """Whether counterfactuals of layers on ``device`` are computed by a deferred job."""
        return self.defer_counterfactuals is True or (self.defer_counterfactuals == "auto" and device.type != "cpu")

    def __enter__(self) -> "RetrievalPipeline":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _slot(self, key, device: torch.device) -> _LayerSlot:
        slot = self._slots.get((key, device))
        if slot is None:
            slot = self._slots[(key, device)] = _LayerSlot(device)
        return slot

    def submit(self, layer_key, q_sym: torch.Tensor, k_sym: torch.Tensor, bits: int,
               want_cf: bool, reuse: bool = False):
        """Start retrieval for uint8 symbols [B, T, R] of one layer; returns at once.

        ``reuse``: the layer will run again on the same input before its backward (activation checkpointing
        recomputes it); the result (with counterfactuals) is kept, and the next submit of this layer with the same
        symbols is answered from it without running the kernel. A kept result is handed out once, so it lives from
        the layer's forward to its recompute, as autograd's saved indices would without checkpointing.
        """
        if q_sym.dtype != torch.uint8 or q_sym.shape != k_sym.shape or q_sym.dim() != 3:
            raise ValueError(f"q_sym/k_sym must be uint8 [B, T, R] of equal shape, got "
                             f"{tuple(q_sym.shape)} {q_sym.dtype} and {tuple(k_sym.shape)} {k_sym.dtype}")
        kept = self._kept.pop(layer_key, None)
        if kept is not None and kept.answers(q_sym, k_sym, bits):
            self.reused += 1
            return _ReusedHandle(kept.handle)
        if not self.running:
            self.start()
        device = q_sym.device
        slot = self._slot(layer_key, device)
        if slot.pending_cf is not None and not slot.pending_cf.done():
            # the layer's previous deferred job still reads the host buffers about to be refilled (its backward
            # never ran, e.g. a forward under autograd that was not backpropagated): let it finish first
            self._executor.release()  # it may still be held back (the forward that submitted it did not finish)
            slot.pending_cf.join()
        slot.pending_cf = None
        q = q_sym.transpose(1, 2).contiguous()  # [B, R, T]: each pair contiguous
        k = k_sym.transpose(1, 2).contiguous()
        if slot.cuda:
            slot.stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(slot.stream):
                hq = slot.host("q", tuple(q.shape), torch.uint8).copy_(q, non_blocking=True)
                hk = slot.host("k", tuple(k.shape), torch.uint8).copy_(k, non_blocking=True)
                slot.event.record(slot.stream)
            q.record_stream(slot.stream)
            k.record_stream(slot.stream)
        else:
            hq, hk = q, k
        deferred = None
        if want_cf and self.defers(device):
            future = self._executor.submit(self._work, slot, hq, hk, bits, False, priority=CRITICAL)
            cf_future = self._executor.submit(self._work_cf, slot, hq, hk, bits, priority=DEFERRED)
            deferred = slot.pending_cf = DeferredCf(cf_future, device, layer_key, self.wait_timeout_s, self._mark_hung)
        else:
            future = self._executor.submit(self._work, slot, hq, hk, bits, want_cf, priority=CRITICAL)
        handle = RetrievalHandle(future, device, layer_key, self.wait_timeout_s, self._mark_hung, deferred)
        if reuse and want_cf:
            self._kept[layer_key] = _KeptResult(q_sym, k_sym, bits, handle)
        return handle

    def end_forward(self) -> None:
        """The model's forward is done: deferred counterfactual jobs may run now (the backward needs them)."""
        if self._executor is not None:
            self._executor.release()

    def _mark_hung(self) -> None:
        self._hung = True

    def _work(self, slot: _LayerSlot, q: torch.Tensor, k: torch.Tensor, bits: int, want_cf: bool):
        """Worker thread: wait for the symbols, match, narrow indices. Exceptions reach ``wait``."""
        if slot.event is not None:
            slot.event.synchronize()
        t0 = time.perf_counter()
        if self._match_fn is None:
            tau, cf = match_narrow(q, k, bits, self.num_threads, want_cf=want_cf, alloc=self._alloc(slot))
            return tau, cf, time.perf_counter() - t0
        match = self._match_fn(q, k, bits, self.num_threads, want_cf=want_cf, layout="BRT")
        B, R, T = match.tau.shape
        dt = index_dtype(T)
        tau = self._narrow(slot, "tau", match.tau, dt)
        cf = self._narrow(slot, "cf", match.cf, dt) if want_cf else None
        return tau, cf, time.perf_counter() - t0

    def _work_cf(self, slot: _LayerSlot, q: torch.Tensor, k: torch.Tensor, bits: int):
        """Worker thread, deferred job: the counterfactual destinations (the kernel computes tau again; it is not
        written anywhere, so the tau already handed out stays untouched)."""
        if slot.event is not None:
            slot.event.synchronize()
        t0 = time.perf_counter()
        if self._match_fn is None:  # the kernel writes no tau
            _, cf = match_narrow(q, k, bits, self.num_threads, want_tau=False, want_cf=True, alloc=self._alloc(slot))
            return None, cf, time.perf_counter() - t0
        match = self._match_fn(q, k, bits, self.num_threads, want_cf=True, layout="BRT")
        cf = self._narrow(slot, "cf", match.cf, index_dtype(match.tau.shape[-1]))
        return None, cf, time.perf_counter() - t0

    @staticmethod
    def _alloc(slot: _LayerSlot):
        """Result buffers of ``match_narrow``: on CUDA the layer's reused pinned buffers (the H2D copy follows), on
        the CPU fresh tensors (autograd keeps them)."""
        return slot.host if slot.cuda else None

    @staticmethod
    def _narrow(slot: _LayerSlot, name: str, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # CPU: a fresh tensor, since autograd keeps it; CUDA: a reused pinned buffer (H2D follows).
        if slot.cuda:
            return slot.host(name, tuple(x.shape), dtype).copy_(x)
        return x.to(dtype, copy=True)
