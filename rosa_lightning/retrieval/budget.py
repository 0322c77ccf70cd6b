"""The CPU-core budget of one rank: threads for the retrieval kernel and for torch (docs/pipeline.md §3).

Every place that sizes the kernel's threads goes through ``cpu_budget`` / ``kernel_threads``: the training
callback (``callbacks/runtime.py``), a lazily started pipeline, and the generation state. On a node with
``usable`` cores (this process's CPU affinity) shared by ``local_world`` ranks::

    per_rank       = usable // local_world
    kernel_threads = max(1, per_rank - cpu_reserved - num_workers)          (num_threads = "auto")
    torch_threads  = 1 on accelerator ranks; on CPU ranks max(1, per_rank - num_workers)

``cpu_reserved`` is the rank's main thread, ``num_workers`` its DataLoader workers. An explicit thread count is
used as given after the kernel's own limit check (``validation.resolve_threads``).
"""
from __future__ import annotations

from typing import Optional, Union

from .validation import resolve_threads, usable_cores


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
