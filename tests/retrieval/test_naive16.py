"""The one-loop naive scan of narrow bits-4 pairs (cython_ext/naive16.pxi) against the generic scan loop
(MODE_GENERIC) and the reference: random and adversarial inputs, with and without counterfactuals, the switch to the
link-cut tree in the middle of a call, left padding, chunked and journaled streams, and match_into."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rosa_lightning.retrieval import RosaStream, rosa_match
from rosa_lightning.retrieval._native import MODE_GENERIC, MODE_HYBRID, MODE_LCT, MODE_NAIVE
from rosa_lightning.retrieval.match import match_narrow
from rosa_lightning.retrieval.reference import scan_pair_reference

from ._gen import KINDS, make_pair
from .test_kernel import assert_matches, run_pair

BITS = 4


def check_batch(q, k, bits, mode):
    """A [B, T, R] input on the fast loop equals the generic loop and the pure link-cut tree, at one and two
    threads, with and without counterfactuals."""
    fast = rosa_match(q, k, bits, num_threads=1, want_cf=True, _mode=mode)
    assert_same(fast, rosa_match(q, k, bits, num_threads=1, want_cf=True, _mode=mode | MODE_GENERIC))
    assert_same(fast, rosa_match(q, k, bits, num_threads=1, want_cf=True, _mode=MODE_LCT))
    assert_same(fast, rosa_match(q, k, bits, num_threads=2, want_cf=True, _mode=mode))
    tau_only = rosa_match(q, k, bits, num_threads=1, want_cf=False, _mode=mode)
    assert torch.equal(tau_only.tau, fast.tau)


def assert_same(a, b):
    assert torch.equal(a.tau, b.tau)
    assert torch.equal(a.num_q_runs, b.num_q_runs)
    if a.cf is not None or b.cf is not None:
        assert torch.equal(a.cf, b.cf)


@st.composite
def pairs(draw, bits=BITS, few_symbols=False):
    """One (q, k) pair of a generator kind; with few_symbols, sometimes mapped onto 1..6 drawn symbols."""
    kind = draw(st.sampled_from(KINDS))
    T = draw(st.integers(1, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    q, k = make_pair(kind, T, bits, np.random.default_rng(seed))
    if few_symbols and draw(st.booleans()):
        alphabet = np.array(draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=6)))
        q, k = alphabet[q % len(alphabet)], alphabet[k % len(alphabet)]
    return q.tolist(), k.tolist()


def check_fast_loop(q, k, bits, want_cf):
    """One pair on the fast loop equals the generic loop and the reference."""
    fast = run_pair(q, k, bits, MODE_HYBRID, want_cf=want_cf)
    generic = run_pair(q, k, bits, MODE_HYBRID | MODE_GENERIC, want_cf=want_cf)
    assert_same(fast, generic)
    expected = scan_pair_reference(q, k, bits)
    assert fast.tau[0, 0].tolist() == expected["tau"]
    if want_cf:
        assert_matches(fast, expected, q, bits)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pairs(), want_cf=st.booleans())
def test_fast_loop_equals_reference_and_generic(case, want_cf):
    check_fast_loop(*case, BITS, want_cf)


def adversarial(T, rng, bits=BITS, periods=range(1, 17), extra=None):
    """[1, T, R] pairs that stress the loop at 2**bits symbols: uniform, every period in ``periods`` (q shifted or
    not), long runs, blocks copied at random offsets, a 2-symbol alphabet (deep chains, frequent clones), the
    columns ``extra(T, rng)`` returns, and the full alphabet in order."""
    A = 1 << bits
    cols = []
    for p in periods:
        base = rng.integers(0, A, p)
        k = np.resize(base, T)
        cols.append((np.roll(k, -int(rng.integers(0, p))), k))
    cols.append((rng.integers(0, A, T), rng.integers(0, A, T)))
    runs = np.repeat(rng.integers(0, A, T), rng.integers(1, 40, T))[:T]
    cols.append((np.roll(runs, 3), runs))
    block = rng.integers(0, A, 97)
    copies = np.concatenate([block if rng.random() < 0.5 else rng.integers(0, A, 97) for _ in range(T // 97 + 1)])[:T]
    cols.append((copies, copies))
    two = rng.integers(0, 2, T) * (A - 1)
    cols.append((two[::-1].copy(), two))
    if extra is not None:
        cols += extra(T, rng)
    ramp = np.arange(T) % A
    cols.append((ramp, ramp))
    q = np.stack([c[0] for c in cols], axis=1)[None].astype(np.int32)
    k = np.stack([c[1] for c in cols], axis=1)[None].astype(np.int32)
    return q, k


@pytest.mark.parametrize("mode", [MODE_HYBRID, MODE_NAIVE], ids=["hybrid", "naive"])
def test_adversarial_inputs_at_training_length(mode):
    """T = 16384: the periodic pairs exhaust the hybrid path's chain-work budget inside the fast loop and finish on
    the link-cut tree; every pair equals the generic loop and the pure link-cut tree, at one and two threads (the
    naive path, which never switches, at T = 6000)."""
    q, k = adversarial(16384 if mode == MODE_HYBRID else 6000, np.random.default_rng(7))  # naive: quadratic here
    check_batch(q, k, BITS, mode)


def test_stream_switches_inside_the_fast_loop():
    """A periodic stream fed in chunks reaches the link-cut tree from the fast loop (the budget is checked there)
    and gives rosa_match's tau; so does a stream kept on the generic loop."""
    T = 8000
    k = np.resize(np.array([0, 9, 3]), T).reshape(1, T, 1).astype(np.int32)
    q = np.roll(k, -1, axis=1)
    expected = rosa_match(q, k, BITS, want_cf=False).tau
    for mode in (MODE_HYBRID, MODE_HYBRID | MODE_GENERIC):
        stream = RosaStream(1, 1, BITS, _mode=mode)
        got, t = [], 0
        for size in (3000, 1, 1, 500, T - 3502):
            got.append(stream.scan(q[:, t:t + size], k[:, t:t + size]))
            t += size
        assert torch.equal(torch.cat(got, dim=2), expected)
        assert stream._state.lct_pairs() == 1


@pytest.mark.parametrize("mode", [MODE_HYBRID, MODE_HYBRID | MODE_GENERIC], ids=["fast", "generic"])
def test_stream_padding_chunks_and_journal(mode):
    """Left padding (consumed on the generic loop, then the fast loop), chunks of every size, and journaled chunks
    (the generic loop, rolled back and scanned again) interleaved with unjournaled ones on the same pairs."""
    rng = np.random.default_rng(3)
    B, T, R = 2, 700, 5
    q = np.zeros((B, T, R), np.int32)
    k = np.zeros((B, T, R), np.int32)
    for b in range(B):
        for r in range(R):
            q[b, :, r], k[b, :, r] = make_pair(KINDS[(b * R + r) % len(KINDS)], T, BITS, rng)
    start = np.array([0, 41])
    stream = RosaStream(B, R, BITS, _mode=mode)
    got, t, first = [], 0, True
    while t < T:
        size = 60 if first else int(min(T - t, rng.choice([1, 3, 17, 64, 150])))  # the first chunk holds the padding
        if not first and rng.random() < 0.3:
            stream.scan(q[:, t:t + size], k[:, t:t + size], journal=True)
            stream.rollback(size)
        got.append(stream.scan(q[:, t:t + size], k[:, t:t + size], start=start if first else None))
        t += size
        first = False
    got = torch.cat(got, dim=2)
    for b, s in enumerate(start):
        row = rosa_match(q[b:b + 1, s:], k[b:b + 1, s:], BITS, want_cf=False).tau[0]
        assert torch.equal(got[b, :, s:], torch.where(row >= 0, row + int(s), row))
        assert (got[b, :, :s] == -1).all()


def test_match_into_narrow_outputs():
    """The pipeline's entry (cached arenas, int16 results, dynamic pair schedule) on the fast loop equals the generic
    loop, twice in a row (the second call reuses the arenas)."""
    q, k = adversarial(3000, np.random.default_rng(11))
    qt = torch.from_numpy(q).permute(0, 2, 1).contiguous().to(torch.uint8)
    kt = torch.from_numpy(k).permute(0, 2, 1).contiguous().to(torch.uint8)
    for _ in range(2):
        fast = match_narrow(qt, kt, BITS, 2, _mode=MODE_HYBRID)
        generic = match_narrow(qt, kt, BITS, 2, _mode=MODE_HYBRID | MODE_GENERIC)
        assert all(torch.equal(a, b) for a, b in zip(fast, generic))
