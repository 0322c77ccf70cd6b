"""Boundary checks and conversions for the retrieval kernel's inputs."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

# Automaton state ids are int32 and a pair holds up to 2*T + 2 states.
MAX_LENGTH = 2**30 - 2
_NUMPY_DTYPES = (np.uint8, np.int32, np.int64)
_TORCH_DTYPES = (torch.uint8, torch.int32, torch.int64)


def check_bits(bits) -> int:
    """bits must be an int in 1..8 (symbols fit in uint8)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int in 1..8, got {type(bits).__name__}")
    if not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return int(bits)


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


def as_symbols(x, name: str, bits: int, rank: int = 3) -> np.ndarray:
    """Validate an integer symbol array and return it as a C-contiguous uint8 numpy array.

    Accepts numpy arrays or CPU torch tensors of dtype uint8, int32 or int64 (int64 for
    convenience) with values in [0, 2**bits). Non-contiguous input is copied.
    """
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor, got device {x.device}")
        if x.dtype not in _TORCH_DTYPES:
            raise TypeError(f"{name} must have dtype uint8, int32 or int64, got {x.dtype}")
        arr = x.detach().numpy()
    elif isinstance(x, np.ndarray):
        if x.dtype.type not in _NUMPY_DTYPES:
            raise TypeError(f"{name} must have dtype uint8, int32 or int64, got {x.dtype}")
        arr = x
    else:
        raise TypeError(f"{name} must be a numpy array or a CPU torch tensor, got {type(x).__name__}")
    if arr.ndim != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(arr.shape)}")
    if arr.size and arr.dtype != np.uint8 or bits < 8:
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= (1 << bits):
                raise ValueError(
                    f"{name} symbols must lie in [0, {1 << bits}) for bits={bits}, got range [{lo}, {hi}]"
                )
    return np.ascontiguousarray(arr, dtype=np.uint8)
