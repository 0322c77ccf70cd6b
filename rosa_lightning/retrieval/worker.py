"""The retrieval worker: one daemon thread that runs submitted calls, critical ones first (docs/pipeline.md §1).

Jobs carry a priority: ``CRITICAL`` (a layer's tau, which its forward waits for) runs in submission order;
``DEFERRED`` (counterfactual destinations, needed only by that layer's backward) is held back until ``release()``
(the end of the model's forward) and then runs after every critical job, latest first, which is the order the
backward needs them in. A running job is never interrupted (the kernel cannot be): holding deferred jobs back keeps
one from starting in a gap of the forward and delaying the next layer's critical job by its whole length.
"""
from __future__ import annotations

import itertools
import queue
import threading
import weakref
from concurrent.futures import Future
from typing import Callable, Optional

CRITICAL = 0
DEFERRED = 1
_STOP = 2  # after every queued job


class DaemonWorker:
    """One daemon thread that runs submitted calls by priority, then in order.

    Unlike ``ThreadPoolExecutor``'s workers it does not keep the interpreter alive at exit, so a job
    stuck in the kernel (which cannot be interrupted) cannot keep the process alive after the timeout
    error has ended the run. Like them, the thread ends when its owner is garbage-collected without
    ``shutdown`` (a model's lazily created pipeline): the thread holds only the job queue, and a
    finalizer queues the stop marker.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._held: list = []
        self._held_lock = threading.Lock()
        self._thread = threading.Thread(target=_run_jobs, args=(self._jobs,), name=name, daemon=True)
        self._thread.start()
        weakref.finalize(self, _stop, self._jobs, self._order)

    def submit(self, fn: Callable, *args, priority: int = CRITICAL) -> Future:
        if priority not in (CRITICAL, DEFERRED):
            raise ValueError(f"priority must be CRITICAL ({CRITICAL}) or DEFERRED ({DEFERRED}), got {priority!r}")
        future: Future = Future()
        if priority == DEFERRED:
            with self._held_lock:
                self._held.append((future, fn, args))
        else:
            self._jobs.put((priority, next(self._order), (future, fn, args)))
        return future

    def release(self) -> None:
        """Queue the held deferred jobs, latest first, behind every critical job."""
        with self._held_lock:
            held, self._held = self._held, []
        for job in held:
            self._jobs.put((DEFERRED, -next(self._order), job))

    def shutdown(self, timeout: Optional[float]) -> None:
        """Stop after the queued jobs (held deferred ones included); wait up to ``timeout`` seconds (None = until
        done)."""
        self.release()
        _stop(self._jobs, self._order)
        self._thread.join(timeout)


def _stop(jobs: queue.PriorityQueue, order) -> None:
    jobs.put((_STOP, next(order), None))


def _run_jobs(jobs: queue.PriorityQueue) -> None:
    """The worker loop: run queued ``(future, fn, args)`` until the stop marker."""
    while (job := jobs.get()[2]) is not None:
        future, fn, args = job
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            future.set_exception(exc)
        del job, future, fn, args  # hold nothing of a finished job while waiting for the next
