"""Input generators for the retrieval tests: the kinds of docs/retrieval.md §8.1 (uniform, same, shift, copy,
periodic, runs)."""
import numpy as np

KINDS = ("uniform", "same", "shift", "copy", "periodic", "runs")


def make_pair(kind: str, T: int, bits: int, rng: np.random.Generator):
    """q, k int arrays of length T for one pair."""
    A = 1 << bits
    if kind == "uniform":
        return rng.integers(0, A, T), rng.integers(0, A, T)
    if kind == "same":
        k = rng.integers(0, A, T)
        return k.copy(), k
    if kind == "shift":
        k = rng.integers(0, A, T + 1)
        return k[1:].copy(), k[:T].copy()
    if kind == "copy":
        half = rng.integers(0, A, (T + 1) // 2)
        k = np.concatenate([half, half])[:T]
        q = np.concatenate([half, half])[:T] if rng.random() < 0.5 else rng.integers(0, A, T)
        return q, k
    if kind == "periodic":
        p = int(rng.integers(1, 9))
        base = rng.integers(0, A, p)
        k = np.resize(base, T)
        shift = int(rng.integers(0, 3))
        q = np.resize(np.roll(base, -shift), T) if rng.random() < 0.8 else rng.integers(0, A, T)
        return q, k
    if kind == "runs":
        return run_sequence(T, A, 1, 9, rng), run_sequence(T, A, 1, 9, rng)
    raise ValueError(kind)


def run_sequence(T: int, A: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """T symbols in runs of a random symbol, each run lo..hi-1 long."""
    out = []
    while len(out) < T:
        out += [int(rng.integers(0, A))] * int(rng.integers(lo, hi))
    return np.array(out[:T])


def periodic_pattern(T: int, bits: int, period: int, shifted: bool, rng: np.random.Generator):
    """k periodic with the given period (adjacent symbols may repeat); q == k or shifted by one."""
    A = 1 << bits
    base = rng.integers(0, A, period)
    k = np.resize(base, T + 1)
    return (k[1:].copy() if shifted else k[:T].copy()), k[:T].copy()
