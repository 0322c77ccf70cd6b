"""``match_narrow`` (the pipeline's kernel entry: narrow outputs written by the kernel's threads, cached arenas,
dynamic scheduling, range checks inside the kernel's passes) against ``rosa_match`` and the vectors."""
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rosa_lightning.retrieval import _native, rosa_match
from rosa_lightning.retrieval.match import match_narrow
from rosa_lightning.retrieval.reference import scan_pair_reference

from ._gen import KINDS, make_pair
from ._vectors import load_cases

MODES = {"hybrid": _native.MODE_HYBRID, "naive": _native.MODE_NAIVE, "lct": _native.MODE_LCT,
         "lct_wide": _native.MODE_LCT | _native.MODE_WIDE}


def batch(kinds, B, R, T, bits, seed):
    """uint8 q, k [B, R, T] with one input kind per pair (cycled)."""
    rng = np.random.default_rng(seed)
    q, k = np.zeros((B, R, T), np.uint8), np.zeros((B, R, T), np.uint8)
    for i in range(B * R):
        qi, ki = make_pair(kinds[i % len(kinds)], T, bits, rng)
        q[i // R, i % R], k[i // R, i % R] = qi, ki
    return torch.from_numpy(q), torch.from_numpy(k)


def expected(q, k, bits, mode=_native.MODE_HYBRID):
    m = rosa_match(q, k, bits, num_threads=1, want_cf=True, layout="BRT", _mode=mode)
    return m.tau, m.cf


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("dtype", [torch.int16, torch.int32])
def test_equals_rosa_match_on_every_input_kind(bits, dtype):
    q, k = batch(KINDS, 2, 6, 400, bits, seed=bits)
    tau, cf = expected(q, k, bits)
    for threads in (1, 2, 3):
        got_tau, got_cf = match_narrow(q, k, bits, threads, dtype=dtype)
        assert got_tau.dtype == dtype and got_cf.dtype == dtype
        assert torch.equal(got_tau.to(torch.int32), tau) and torch.equal(got_cf.to(torch.int32), cf)


@pytest.mark.parametrize("mode", list(MODES))
def test_every_path_mode(mode):
    q, k = batch(KINDS, 1, 12, 700, 4, seed=7)
    tau, cf = expected(q, k, 4, MODES[mode])
    got_tau, got_cf = match_narrow(q, k, 4, 2, _mode=MODES[mode])
    assert torch.equal(got_tau.int(), tau) and torch.equal(got_cf.int(), cf)


def test_vectors():
    for case in load_cases():
        q = torch.tensor(case["q"], dtype=torch.uint8).view(1, 1, -1)
        k = torch.tensor(case["k"], dtype=torch.uint8).view(1, 1, -1)
        tau, cf = match_narrow(q, k, case["M"], 1)
        assert tau[0, 0].tolist() == case["tau"], case["label"]
        assert torch.equal(cf.int(), rosa_match(q, k, case["M"], 1, layout="BRT").cf), case["label"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.integers(1, 8), T=st.integers(1, 90), pairs=st.integers(1, 5), kind=st.sampled_from(KINDS),
       seed=st.integers(0, 2**31 - 1), threads=st.integers(1, 4))
def test_property_equals_rosa_match(bits, T, pairs, kind, seed, threads):
    q, k = batch([kind], 1, pairs, T, bits, seed)
    tau, cf = expected(q, k, bits)
    got_tau, got_cf = match_narrow(q, k, bits, threads, dtype=torch.int32)
    assert torch.equal(got_tau, tau) and torch.equal(got_cf, cf)


def test_tau_only_and_cf_only():
    q, k = batch(KINDS, 2, 3, 300, 4, seed=1)
    tau, cf = expected(q, k, 4)
    only_tau, none_cf = match_narrow(q, k, 4, 2, want_cf=False)
    none_tau, only_cf = match_narrow(q, k, 4, 2, want_tau=False)
    assert none_cf is None and none_tau is None
    assert torch.equal(only_tau.int(), tau) and torch.equal(only_cf.int(), cf)


def test_results_go_into_the_buffers_alloc_returns():
    q, k = batch(["uniform"], 1, 4, 200, 4, seed=2)
    tau, cf = expected(q, k, 4)
    store = {}

    def alloc(name, shape, dtype):
        store[name] = torch.full(shape, 99, dtype=dtype)
        return store[name]

    got_tau, got_cf = match_narrow(q, k, 4, 2, alloc=alloc)
    assert got_tau.data_ptr() == store["tau"].data_ptr() and got_cf.data_ptr() == store["cf"].data_ptr()
    assert torch.equal(store["tau"].int(), tau) and torch.equal(store["cf"].int(), cf)
    with pytest.raises(ValueError, match="alloc returned a tau buffer"):
        match_narrow(q, k, 4, 1, alloc=lambda name, shape, dtype: torch.empty(3, dtype=dtype))


def test_out_of_range_symbols_are_named_and_leave_the_kernel_usable():
    q, k = batch(["uniform"], 2, 3, 50, 4, seed=3)
    bad_q, bad_k = q.clone(), k.clone()
    bad_q[1, 0, 7] = 16
    bad_k[1, 2, 9] = 200
    with pytest.raises(ValueError, match=r"q symbols must lie in \[0, 16\) for bits=4, got a symbol 16"):
        match_narrow(bad_q, k, 4, 2)
    with pytest.raises(ValueError, match=r"k symbols must lie in \[0, 16\).*symbol 200 \(row 1, route 2\)"):
        match_narrow(q, bad_k, 4, 2)
    tau, cf = expected(q, k, 4)
    got_tau, got_cf = match_narrow(q, k, 4, 2)
    assert torch.equal(got_tau.int(), tau) and torch.equal(got_cf.int(), cf)


def test_bad_arguments():
    q = torch.zeros(1, 2, 5, dtype=torch.uint8)
    with pytest.raises(ValueError, match="k must be a uint8 CPU tensor"):
        match_narrow(q, q.int(), 4)
    with pytest.raises(ValueError, match="same shape"):
        match_narrow(q, q[:, :1], 4)
    with pytest.raises(ValueError, match="at least one position"):
        match_narrow(q[..., :0], q[..., :0], 4)
    with pytest.raises(ValueError, match="int16"):
        match_narrow(q, q, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        match_narrow(q, q, 9)


def test_cached_arenas_follow_the_request_and_stay_exact():
    shapes = [(300, 4), (1200, 4), (200, 8), (1200, 4), (50, 2)]  # grow, change bits, shrink: always exact
    for i, (T, bits) in enumerate(shapes):
        q, k = batch(KINDS, 1, 4, T, bits, seed=10 + i)
        tau, cf = expected(q, k, bits)
        got_tau, got_cf = match_narrow(q, k, bits, 2)
        assert torch.equal(got_tau.int(), tau) and torch.equal(got_cf.int(), cf)
        assert _native.arena_bytes() > 0
    assert _native.release_arenas() and _native.arena_bytes() == 0


def test_concurrent_calls_are_exact():
    inputs = [batch(KINDS, 1, 6, 500, 4, seed=s) for s in range(4)]
    want = [expected(q, k, 4) for q, k in inputs]
    got = [None] * len(inputs)

    def run(i):
        for _ in range(3):
            got[i] = match_narrow(*inputs[i], 4, 1)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (tau, cf), (g_tau, g_cf) in zip(want, got):
        assert torch.equal(g_tau.int(), tau) and torch.equal(g_cf.int(), cf)


def reference_batch(q, k, bits):
    """tau [B, R, T] (as nested lists) of every pair from the pure-Python reference."""
    B, R, T = q.shape
    return [[scan_pair_reference(q[b, r].tolist(), k[b, r].tolist(), bits)["tau"] for r in range(R)]
            for b in range(B)]


def test_rosa_match_shares_the_cached_arenas():
    """rosa_match keeps its arenas between calls in the cache match_narrow uses; the two entries interleaved over
    growing, shrinking and changing requests (bits 8 rows left in an arena that bits 4 and bits 8 reuse) stay equal
    to the reference, and release_arenas frees what they kept."""
    _native.release_arenas()
    steps = [("rosa", 250, 8, 2), ("narrow", 120, 4, 1), ("rosa", 300, 8, 1), ("narrow", 260, 8, 2),
             ("rosa", 40, 4, 2), ("rosa", 260, 8, 2)]
    for i, (entry, T, bits, threads) in enumerate(steps):
        q, k = batch(KINDS, 1, 4, T, bits, seed=30 + i)
        if entry == "rosa":
            tau = rosa_match(q, k, bits, num_threads=threads, layout="BRT").tau
        else:
            tau = match_narrow(q, k, bits, threads)[0].int()
        assert tau.tolist() == reference_batch(q, k, bits)
        assert _native.arena_bytes() > 0
    assert _native.release_arenas() and _native.arena_bytes() == 0


def test_rosa_match_and_match_narrow_concurrently():
    """Threads calling both entries at once: one holds the cache, the others scan on arenas of their own; every
    result equals the same call made alone."""
    inputs = [batch(KINDS, 1, 5, 400, bits, seed=s) for s, bits in enumerate((8, 4, 8, 4))]
    want = [expected(q, k, bits) for (q, k), bits in zip(inputs, (8, 4, 8, 4))]
    got = [None] * len(inputs)

    def run(i, bits):
        for _ in range(3):
            if i % 2:
                got[i] = tuple(x.int() for x in match_narrow(*inputs[i], bits, 1))
            else:
                m = rosa_match(*inputs[i], bits, num_threads=1, layout="BRT")
                got[i] = (m.tau, m.cf)

    threads = [threading.Thread(target=run, args=(i, bits)) for i, bits in enumerate((8, 4, 8, 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (tau, cf), (g_tau, g_cf) in zip(want, got):
        assert torch.equal(g_tau, tau) and torch.equal(g_cf, cf)
