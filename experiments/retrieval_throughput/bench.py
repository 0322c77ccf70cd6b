"""Throughput of the ROSA retrieval kernel against a baseline of the published approach.

Prints a markdown table: ns per (route, token) of ``rosa_match`` (one thread, counterfactuals on)
per input pattern, its ratio to the uniform-random cost, the baseline's ns per (route, token) and
the speed-up, measured side by side in this process; then uniform random with and without counterfactuals, thread
scaling and state bytes. Beside ``rosa_match`` it measures, pattern by pattern with results asserted equal, either
the generic scan loop (``--compare generic``, the default: MODE_GENERIC, what the one-loop naive scans of bits 4
and 8 replace) or, at bits > 4, the opt-in sparse transition layout (``--compare sparse``, MODE_SPARSE).

    python -m experiments.retrieval_throughput.bench [--T 16384] [--bits 4] [--compare generic|sparse]
"""
import argparse
import os
import time

import numpy as np
import torch

from experiments.retrieval_throughput.baseline_numba import baseline_match
from rosa_lightning.retrieval import RosaStream, _native, rosa_match


def distinct_cycle(period, A, rng):
    """A cycle of `period` symbols with no two cyclically adjacent symbols equal."""
    if period == 1:
        return rng.integers(0, A, 1)
    if period <= A:
        return rng.permutation(A)[:period]
    base = rng.integers(0, A, period)
    for i in range(period):
        while base[i] == base[i - 1] or (i == period - 1 and base[i] == base[0]):
            base[i] = rng.integers(0, A)
    return base


def patterns(T, bits, rng):
    """(name, q [T], k [T]) for every tested input pattern."""
    A = 1 << bits
    yield "uniform random", rng.integers(0, A, T), rng.integers(0, A, T)
    for p in (1, 2, 4, 8, 16, 32, 64):
        k = np.resize(distinct_cycle(p, A, rng), T + 1)
        yield f"periodic p={p}, q=k", k[:T], k[:T]
        yield f"periodic p={p}, q shifted", k[1:], k[:T]
    runs_k, runs_q = [], []
    while len(runs_k) < T:
        runs_k += [int(rng.integers(0, A))] * int(rng.integers(16, 257))
    while len(runs_q) < T:
        runs_q += [int(rng.integers(0, A))] * int(rng.integers(16, 257))
    yield "long runs (16..256)", np.array(runs_q[:T]), np.array(runs_k[:T])
    block = np.resize(rng.integers(0, A, T // 8 + 1), T + 1)
    block = np.resize(block[: T // 8], T + 1)
    yield "block x8, q shifted", block[1:], block[:T]


def timed(fn, repeats):
    best = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--routes", type=int, default=8, help="routes per pattern for rosa_match")
    ap.add_argument("--baseline-routes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", choices=["generic", "sparse"], default="generic",
                    help="measured beside rosa_match: the generic scan loop, or (bits > 4) the sparse layout")
    args = ap.parse_args(argv)
    T, bits, R = args.T, args.bits, args.routes
    if args.compare == "sparse" and bits <= 4:
        ap.error(f"--compare sparse needs --bits above 4 (the sparse layout does not exist at bits {bits})")
    rng = np.random.default_rng(0)
    warm = rng.integers(0, 1 << bits, (2, 64))
    baseline_match(warm, warm, bits)  # compile

    dense_mode = _native.MODE_HYBRID | _native.MODE_DENSE
    other_mode = _native.MODE_HYBRID | (_native.MODE_SPARSE if args.compare == "sparse" else _native.MODE_GENERIC)
    other = "sparse layout" if args.compare == "sparse" else "generic loop"

    def run(qb, kb, threads, mode, want_cf=True):
        return timed(lambda: rosa_match(qb, kb, bits, num_threads=threads, want_cf=want_cf, _mode=mode),
                     args.repeats)

    def table(header, right):
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---:" if right else "---"] + ["---:"] * (len(header) - 1)) + "|")

    def row(cells):
        print("| " + " | ".join(cells) + " |")

    print(f"T={T}, bits={bits}, one thread, counterfactuals on; ns per (route, token), best of {args.repeats}\n")
    table(["pattern", "rosa_match", "/ random", other, "/ random", f"{other} / rosa_match", "baseline",
           "speed-up"], False)
    random_ns = random_other = None
    for name, q, k in patterns(T, bits, rng):
        qb = np.repeat(q.astype(np.uint8)[None, :, None], R, axis=2)
        kb = np.repeat(k.astype(np.uint8)[None, :, None], R, axis=2)
        if name == "uniform random":
            qb = rng.integers(0, 1 << bits, (1, T, R)).astype(np.uint8)
            kb = rng.integers(0, 1 << bits, (1, T, R)).astype(np.uint8)
            uniform = (qb, kb)
        sec, m = run(qb, kb, 1, dense_mode)
        ns = sec / (R * T) * 1e9
        random_ns = random_ns or ns
        osec, mo = run(qb, kb, 1, other_mode)
        assert torch.equal(mo.tau, m.tau) and torch.equal(mo.cf, m.cf), f"the {other} disagrees on {name}"
        ons = osec / (R * T) * 1e9
        random_other = random_other or ons
        cells = [name, f"{ns:.1f}", f"{ns / random_ns:.2f}", f"{ons:.1f}", f"{ons / random_other:.2f}",
                 f"{ons / ns:.2f}"]
        P = args.baseline_routes
        qp = np.ascontiguousarray(qb[0, :, :P].T).astype(np.int64)
        kp = np.ascontiguousarray(kb[0, :, :P].T).astype(np.int64)
        bsec, (btau, _) = timed(lambda: baseline_match(qp, kp, bits), 1)
        assert np.array_equal(btau, m.tau[0, :P].numpy()), f"baseline disagrees on {name}"
        bns = bsec / (P * T) * 1e9
        row(cells + [f"{bns:.1f}", f"{bns / ns:.1f}x"])

    print("\nUniform random, one thread, τ only and with counterfactuals (ns per (route, token)):\n")
    table(["outputs", "rosa_match", other, f"{other} / rosa_match"], False)
    for want_cf in (False, True):
        sec, m = run(*uniform, 1, dense_mode, want_cf)
        osec, mo = run(*uniform, 1, other_mode, want_cf)
        assert torch.equal(mo.tau, m.tau) and (not want_cf or torch.equal(mo.cf, m.cf)), \
            f"the {other} disagrees on uniform random"
        row(["with counterfactuals" if want_cf else "τ only", f"{sec / (R * T) * 1e9:.1f}",
             f"{osec / (R * T) * 1e9:.1f}", f"{osec / sec:.2f}"])

    print("\nThread scaling, uniform random, 4·R pairs:\n")
    table(["threads", "rosa_match, ns per (route, token) wall", "speed-up", other, "speed-up"], True)
    qb = rng.integers(0, 1 << bits, (2, T, 2 * R)).astype(np.uint8)
    kb = rng.integers(0, 1 << bits, (2, T, 2 * R)).astype(np.uint8)
    pairs = qb.shape[0] * qb.shape[2]
    one = {}
    for threads in sorted({1, 2, len(os.sched_getaffinity(0))}):
        cells = [str(threads)]
        for mode in (dense_mode, other_mode):
            sec, _ = run(qb, kb, threads, mode)
            ns = sec / (pairs * T) * 1e9
            one.setdefault(mode, ns)
            cells += [f"{ns:.1f}", f"{one[mode] / ns:.2f}x"]
        row(cells)

    print("\nPersistent RosaStream state after T tokens (bytes per (route, token)):\n")
    print("| pattern | bytes |")
    print("|---|---:|")
    for name, q, k in patterns(T, bits, np.random.default_rng(1)):
        if name not in ("uniform random", "periodic p=2, q shifted", "block x8, q shifted"):
            continue
        stream = RosaStream(1, 1, bits, num_threads=1)
        stream.scan(q.astype(np.uint8)[None, :, None], k.astype(np.uint8)[None, :, None])
        print(f"| {name} | {stream.nbytes() / T:.1f} |")
    A = 1 << bits
    ids = 2 if 2 * T + 2 <= 65535 else 4   # uint16 state ids while the states fit, else int32
    arena = (2 * T + 2) * (A + 4 + 4) * ids + 4 * (T + 1) + T   # rows + record + LCT record
    print(f"\nTraining arena (dense, {8 * ids}-bit ids, per thread, kept between calls): "
          f"{arena / T:.0f} bytes per token of T.")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
