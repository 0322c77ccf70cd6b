"""The batch kernel's sparse transition layout (cython_ext/sparse.pxi: root row, presence bitmaps, hashed
transitions) against docs/retrieval.md §3 (the reference) and against the dense rows, on inputs that stress it:
high-degree states and clones of them, sparse alphabets, long runs, every period up to 64, the switch to the
link-cut tree, many pairs per arena (the table's epochs) and int32 ids."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from rosa_lightning.retrieval import _native, rosa_match
from rosa_lightning.retrieval.match import match_narrow
from rosa_lightning.retrieval.reference import scan_pair_reference

from ._gen import run_sequence
from .test_kernel import assert_matches

SPARSE, DENSE = _native.MODE_SPARSE, _native.MODE_DENSE
PATHS = {"hybrid": _native.MODE_HYBRID, "naive": _native.MODE_NAIVE, "lct": _native.MODE_LCT,
         "naive_wide": _native.MODE_NAIVE | _native.MODE_WIDE, "lct_wide": _native.MODE_LCT | _native.MODE_WIDE}


def de_bruijn(A: int, n: int) -> np.ndarray:
    """The de Bruijn sequence B(A, n) (every length-n word over A symbols once, cyclically), from the
    concatenation of the Lyndon words whose length divides n, in lexicographic order."""
    out, word = [], [0] * (n + 1)

    def gen(t, p):
        if t > n:
            if n % p == 0:
                out.extend(word[1:p + 1])
            return
        word[t] = word[t - p]
        gen(t + 1, p)
        for s in range(word[t - p] + 1, A):
            word[t] = s
            gen(t + 1, t)

    gen(1, 1)
    return np.array(out, dtype=np.int64)


def inputs(name: str, T: int, bits: int, rng: np.random.Generator):
    """(q, k) int arrays [T] of one stress input."""
    A = 1 << bits
    if name == "uniform":
        return rng.integers(0, A, T), rng.integers(0, A, T)
    if name.startswith("periodic"):
        p = int(name.split("=")[1])
        k = np.resize(rng.integers(0, A, p), T + 1)
        return k[1:].copy(), k[:T].copy()
    if name == "long_runs":
        return run_sequence(T, A, 16, 257, rng), run_sequence(T, A, 16, 257, rng)
    if name == "sparse_alphabet":          # 3 symbols scattered over the alphabet
        sub = rng.choice(A, 3, replace=False)
        return sub[rng.integers(0, 3, T)], sub[rng.integers(0, 3, T)]
    if name == "high_degree":              # the root and every depth-1 state get A transitions
        k = np.resize(rng.permutation(A)[de_bruijn(A, 2)], T + 1)
        q = k[1:].copy()                   # q_t = k_{t+1}, with a fifth of the positions random
        noise = rng.random(T) < 0.2
        q[noise] = rng.integers(0, A, int(noise.sum()))
        return q, k[:T].copy()
    raise ValueError(name)


STRESS = ["uniform", "long_runs", "sparse_alphabet", "high_degree"] + [f"periodic={p}" for p in
                                                                       (1, 2, 3, 5, 8, 13, 16, 31, 32, 64)]


def run(q, k, bits, mode, threads=1):
    q = np.asarray(q, dtype=np.uint8).reshape(1, 1, -1)
    k = np.asarray(k, dtype=np.uint8).reshape(1, 1, -1)
    return rosa_match(q, k, bits, num_threads=threads, want_cf=True, layout="BRT", _mode=mode)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("bits", [5, 6, 7, 8])
@pytest.mark.parametrize("name", STRESS)
def test_stress_inputs_vs_reference(name, bits, path):
    T = 700
    rng = np.random.default_rng(hash((name, bits)) % 2**32)
    q, k = inputs(name, T, bits, rng)
    expected = scan_pair_reference(q.tolist(), k.tolist(), bits)
    assert_matches(run(q, k, bits, PATHS[path] | SPARSE), expected, q.tolist(), bits)


def test_high_degree_states_really_have_many_transitions():
    """The high-degree input does what it is for: at bits = 8 its root and shallow states have ~256 transitions
    (checked on the reference automaton), and a match over it still agrees with the reference."""
    from rosa_lightning.retrieval.reference import _Automaton, k_runs
    q, k = inputs("high_degree", 6000, 8, np.random.default_rng(3))
    sam = _Automaton()
    _, c, _ = k_runs(k.tolist())
    for n, x in enumerate(c):
        sam.extend(x, n)
    degrees = sorted((len(nxt) for nxt in sam.next), reverse=True)
    assert degrees[0] == 256 and degrees[10] >= 200
    expected = scan_pair_reference(q.tolist(), k.tolist(), 8)
    for path in ("hybrid", "lct"):
        assert_matches(run(q, k, 8, PATHS[path] | SPARSE), expected, q.tolist(), 8)


@pytest.mark.parametrize("name", ["uniform", "periodic=2", "periodic=64", "high_degree", "long_runs"])
def test_16k_sparse_equals_dense_across_the_lct_switch(name):
    """At the training length the hybrid path switches to the link-cut tree on periodic input; sparse and dense give
    the same tau and counterfactuals at every thread count, through rosa_match and match_narrow."""
    T, bits, R = 16384, 8, 3
    rng = np.random.default_rng(11)
    pairs = [inputs(name, T, bits, rng) for _ in range(R)]
    q = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.uint8)[None])
    k = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.uint8)[None])
    dense = rosa_match(q, k, bits, num_threads=1, want_cf=True, layout="BRT", _mode=DENSE)
    assert (dense.tau >= 0).any()
    for threads in (1, 2, 3):
        sparse = rosa_match(q, k, bits, num_threads=threads, want_cf=True, layout="BRT", _mode=SPARSE)
        assert torch.equal(sparse.tau, dense.tau) and torch.equal(sparse.cf, dense.cf)
        tau, cf = match_narrow(q, k, bits, threads, _mode=SPARSE)
        assert torch.equal(tau.int(), dense.tau) and torch.equal(cf.int(), dense.cf)


def test_periodic_input_reaches_the_lct_on_the_sparse_layout():
    """A stream of the same (01)* input would switch; the batch kernel's sparse arena switches too and agrees with
    the reference there (the LCT's descents read the bitmaps)."""
    T = 6000
    k = np.resize(np.array([7, 200]), T + 1)
    q = k[1:].copy()
    k = k[:T].copy()
    expected = scan_pair_reference(q.tolist(), k.tolist(), 8)
    for path in ("hybrid", "lct", "naive"):
        assert_matches(run(q, k, 8, PATHS[path] | SPARSE), expected, q.tolist(), 8)


def test_many_pairs_per_arena_reuse_the_table():
    """One thread scans 600 pairs with one arena: the table's epochs wrap (every 255 pairs it is cleared), and no
    transition of an earlier pair leaks into a later one (a pair with many transitions precedes each small one)."""
    bits, T = 8, 60
    rng = np.random.default_rng(5)
    qs, ks = [], []
    for i in range(600):
        name = "high_degree" if i % 2 == 0 else "sparse_alphabet"
        q, k = inputs(name, T, bits, rng)
        qs.append(q)
        ks.append(k)
    q = torch.from_numpy(np.stack(qs).astype(np.uint8)[None])
    k = torch.from_numpy(np.stack(ks).astype(np.uint8)[None])
    dense = rosa_match(q, k, bits, num_threads=1, want_cf=True, layout="BRT", _mode=DENSE)
    sparse = rosa_match(q, k, bits, num_threads=1, want_cf=True, layout="BRT", _mode=SPARSE)
    assert torch.equal(sparse.tau, dense.tau) and torch.equal(sparse.cf, dense.cf)
    for i in (0, 1, 255, 256, 511, 599):
        expected = scan_pair_reference(qs[i].tolist(), ks[i].tolist(), bits)
        assert sparse.tau[0, i].tolist() == expected["tau"]
    # the same through match_narrow's cached arena, called twice (the epoch carries over between calls)
    for _ in range(2):
        tau, cf = match_narrow(q, k, bits, 1, _mode=SPARSE)
        assert torch.equal(tau.int(), dense.tau) and torch.equal(cf.int(), dense.cf)


def test_wide_ids_clear_the_table_per_pair():
    """Beyond 65536 states keys carry no epoch and each pair clears the table: two pairs in one arena."""
    T, bits = 40000, 8
    rng = np.random.default_rng(9)
    pairs = [inputs("uniform", T, bits, rng), inputs("periodic=3", T, bits, rng)]
    q = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.uint8)[None])
    k = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.uint8)[None])
    dense = rosa_match(q, k, bits, num_threads=1, want_cf=True, layout="BRT", _mode=DENSE)
    sparse = rosa_match(q, k, bits, num_threads=1, want_cf=True, layout="BRT", _mode=SPARSE)
    assert torch.equal(sparse.tau, dense.tau) and torch.equal(sparse.cf, dense.cf)


def test_layout_choice_and_arena_size():
    """The flags choose the layout (seen in the cached arena's size): sparse arenas at bits = 8 are several times
    smaller than dense ones; at bits <= 4 MODE_SPARSE is ignored (the presence-mask path keeps dense rows)."""
    T = 4096
    rng = np.random.default_rng(0)

    def arena(bits, mode):
        q = torch.from_numpy(rng.integers(0, 1 << bits, (1, 1, T)).astype(np.uint8))
        _native.release_arenas()
        match_narrow(q, q.clone(), bits, 1, _mode=mode)
        return _native.arena_bytes()

    dense8, sparse8 = arena(8, DENSE), arena(8, SPARSE)
    assert sparse8 * 4 < dense8
    assert arena(8, _native.MODE_HYBRID) in (dense8, sparse8)
    assert arena(4, SPARSE) == arena(4, DENSE)
    assert arena(6, SPARSE) < arena(6, DENSE)


def test_stream_keeps_dense_rows():
    """A stream at bits = 8 ignores the layout flags (its rollback journal records dense writes) and equals the
    batch kernel on either layout."""
    T, bits = 3000, 8
    q, k = inputs("uniform", T, bits, np.random.default_rng(2))
    qb = np.ascontiguousarray(q.astype(np.uint8).reshape(1, T, 1))
    kb = np.ascontiguousarray(k.astype(np.uint8).reshape(1, T, 1))
    plain = _native.StreamState(1, bits, _native.MODE_HYBRID)
    flagged = _native.StreamState(1, bits, _native.MODE_HYBRID | SPARSE)
    got = [np.empty((1, 1, T), np.int32) for _ in range(2)]
    plain.scan(qb, kb, got[0], 1)
    flagged.scan(qb, kb, got[1], 1)
    assert flagged.nbytes() == plain.nbytes()
    assert np.array_equal(got[0], got[1])
    assert got[0][0, 0].tolist() == run(q, k, bits, SPARSE).tau[0, 0].tolist()


OVERFLOW = """
import numpy as np, torch
from rosa_lightning.retrieval import _native
from rosa_lightning.retrieval.match import match_narrow
rng = np.random.default_rng(11)
q, k = (torch.from_numpy(rng.integers(0, 256, (1, 2, 512)).astype(np.uint8)) for _ in range(2))
dense = match_narrow(q, k, 8, 1, _mode=_native.MODE_DENSE)
_native._test_sparse_table_slots(0)
sparse = match_narrow(q, k, 8, 1, _mode=_native.MODE_SPARSE)
assert all(torch.equal(a, b) for a, b in zip(dense, sparse))
print("normal size ok", flush=True)
_native._test_sparse_table_slots(16)
match_narrow(q, k, 8, 1, _mode=_native.MODE_SPARSE)
print("not reached", flush=True)
"""


def test_an_overflowing_table_aborts_instead_of_probing_forever():
    """A table too small for the arena (the load invariant broken on purpose, in a child process) ends the process
    with a message naming the broken invariant, within seconds, instead of a lookup that probes forever; at the
    normal size the same input gives the dense rows' results."""
    proc = subprocess.run([sys.executable, "-c", OVERFLOW], capture_output=True, text=True, timeout=120)
    assert "normal size ok" in proc.stdout and "not reached" not in proc.stdout
    assert proc.returncode != 0
    assert "sparse transition table has neither the key nor an empty slot" in proc.stderr
