"""The CPU-core budget of one rank: threads for the retrieval kernel and for torch (docs/pipeline.md §3).

Every place that sizes the kernel's threads goes through ``cpu_budget`` / ``kernel_threads``: the training
callback (``callbacks/runtime.py``), a lazily started pipeline, and the generation state. On a node with
``usable`` cores (this process's CPU affinity) shared by ``local_world`` ranks::

    per_rank       = usable // local_world
    kernel_threads = max(1, per_rank - cpu_reserved - num_workers)          (num_threads = "auto")
    torch_threads  = 1 on accelerator ranks; on CPU ranks max(1, per_rank - num_workers)

``cpu_reserved`` is the rank's main thread, ``num_workers`` its DataLoader workers. An explicit thread count is
used as given after the limit check below (``resolve_threads``), which every kernel entry point applies; a direct
kernel call without a count (``rosa_match``, ``RosaStream``, ``rosa_next_token``, ``TokenStream`` with
``num_threads=None``) uses every core the process may run on.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np


def cpu_budget(usable: Optional[int] = None, local_world: int = 1, num_workers: int = 0, cpu_reserved: int = 1,
               on_accelerator: bool = False) -> dict[str, int]:
    """Threads per rank: ``kernel`` (retrieval), ``torch`` (intra-op) and the rank's ``per_rank`` share of cores.

    Args:
        usable: cores on this node the process may use; None = its CPU affinity count.
        local_world: ranks sharing those cores.
        num_workers: the rank's DataLoader worker processes.
        cpu_reserved: cores kept for the rank's main thread.
        on_accelerator: whether the rank computes on an accelerator (then torch needs one thread).
    """
    usable = usable_cores() if usable is None else usable
    for name, value, low in (("usable", usable, 1), ("local_world", local_world, 1), ("num_workers", num_workers, 0),
                             ("cpu_reserved", cpu_reserved, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"CPU budget: {name} must be an int >= {low}, got {value!r} (usable={usable}, "
                             f"local_world={local_world}, num_workers={num_workers}, cpu_reserved={cpu_reserved})")
    per_rank = max(1, usable // local_world)
    kernel = max(1, per_rank - cpu_reserved - num_workers)
    torch_threads = 1 if on_accelerator else max(1, per_rank - num_workers)
    return {"per_rank": per_rank, "kernel": kernel, "torch": torch_threads}


def kernel_threads(num_threads: Union[str, int] = "auto", *, local_world: int = 1, num_workers: int = 0,
                   cpu_reserved: int = 1) -> int:
    """The kernel thread count for ``num_threads`` ("auto" = the budget above, or an explicit int >= 1)."""
    if num_threads == "auto":
        return cpu_budget(None, local_world, num_workers, cpu_reserved)["kernel"]
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be 'auto' or an int >= 1, got {num_threads!r}")
    return resolve_threads(num_threads)  # fails here, at setup, for a count OpenMP cannot start


# OpenMP aborts the whole process (not an exception) when it cannot create a thread; that happens near the
# system's thread limit (measured: 20,000 threads ran and 40,000 aborted under pid_max = 32,768). More threads
# than cores never speed the kernel up, so the cap sits far below that limit.
THREADS_PER_CORE = 8
MIN_THREAD_CAP = 64
_LIMIT_FILES = ("/proc/sys/kernel/threads-max", "/proc/sys/kernel/pid_max", "/sys/fs/cgroup/pids.max",
                "/sys/fs/cgroup/pids/pids.max")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def system_thread_limit() -> Optional[int]:
    """The smallest of the limits on threads this process's user may create (None when none is known)."""
    limits = []
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(int(soft))
    except (ImportError, ValueError, OSError):
        pass
    for name in _LIMIT_FILES:
        try:
            with open(name) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits) if limits else None


def max_kernel_threads() -> int:
    """The most kernel threads accepted: ``THREADS_PER_CORE`` per usable core (at least ``MIN_THREAD_CAP``),
    and never more than half of the system's thread limit."""
    cap = max(MIN_THREAD_CAP, THREADS_PER_CORE * usable_cores())
    limit = system_thread_limit()
    return max(1, min(cap, limit // 2)) if limit else cap


def resolve_threads(num_threads: Optional[int]) -> int:
    """None = every core this process may run on (its CPU affinity); an int must be in 1..``max_kernel_threads()``."""
    if num_threads is None:
        return usable_cores()
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be None or a positive int, got {type(num_threads).__name__}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    cap = max_kernel_threads()
    if num_threads > cap:
        raise ValueError(f"num_threads={num_threads} is more than this machine allows for the retrieval kernel "
                         f"({cap}: {THREADS_PER_CORE} per usable core of {usable_cores()}, at least {MIN_THREAD_CAP}, "
                         f"and at most half the system thread limit {system_thread_limit()}); OpenMP would abort "
                         f"the process near that limit. Use model.rosa.runtime.num_threads=auto or a number up to {cap}")
    return int(num_threads)
