"""Boundary checks and conversions for the retrieval kernel's inputs."""
from __future__ import annotations


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
