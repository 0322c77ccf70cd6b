"""The one-loop naive scan of narrow bits-8 batch pairs (cython_ext/naive256.pxi: rows valid group by group) against
the generic scan loop (MODE_GENERIC) and the reference: random and adversarial inputs, with and without
counterfactuals, the switch to the link-cut tree in the middle of a call (the rows are made whole first), arenas
that hold an earlier pair's rows, thread counts, match_into, and streams (which never take this loop)."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rosa_lightning.retrieval import RosaStream, rosa_match
from rosa_lightning.retrieval._native import MODE_GENERIC, MODE_HYBRID, MODE_NAIVE
from rosa_lightning.retrieval.match import match_narrow

from ._gen import KINDS, make_pair
from .test_naive16 import adversarial as adversarial16
from .test_naive16 import check_batch, check_fast_loop, pairs

BITS = 8
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Few-symbol alphabets: all in one or two groups or spread over several (deep chains, shared and distinct groups).
@given(case=pairs(BITS, few_symbols=True), want_cf=st.booleans())
def test_fast_loop_equals_reference_and_generic(case, want_cf):
    check_fast_loop(*case, BITS, want_cf)


def group_columns(T, rng):
    """Two symbols of one group, two of two groups, and every flip of one symbol (a ^ 2^j: each probe in another
    group)."""
    one_group = np.array([17, 30])[rng.integers(0, 2, T)]
    two_groups = np.array([3, 200])[rng.integers(0, 2, T)]
    flips = np.array([77] + [77 ^ (1 << j) for j in range(8)])
    return [(one_group[::-1].copy(), one_group), (two_groups[::-1].copy(), two_groups),
            (flips[rng.integers(0, 9, T)], flips[rng.integers(0, 9, T)])]


def adversarial(T, rng):
    """[1, T, R] pairs: the bits-4 loop's stress inputs at 256 symbols (periods 1..12 and 64) and the group columns."""
    return adversarial16(T, rng, bits=BITS, periods=list(range(1, 13)) + [64], extra=group_columns)


@pytest.mark.parametrize("mode", [MODE_HYBRID, MODE_NAIVE], ids=["hybrid", "naive"])
def test_adversarial_inputs_at_training_length(mode):
    """T = 16384: the periodic pairs exhaust the chain-work budget inside the fast loop, whose rows are then made
    whole for the link-cut tree; every pair equals the generic loop and the pure link-cut tree, at one and two
    threads; one thread scans the pairs in turn in one arena, so each pair starts on the rows the one before left
    (the naive path, which never switches, at T = 5000)."""
    q, k = adversarial(16384 if mode == MODE_HYBRID else 5000, np.random.default_rng(7))
    check_batch(q, k, BITS, mode)


def test_stale_rows_of_earlier_pairs():
    """Pairs scanned one after another in one arena, ordered so that a pair with few groups follows pairs that
    filled many groups of the same states (and the reverse): each equals the same pair scanned alone."""
    rng = np.random.default_rng(5)
    T = 3000
    cols = []
    for r in range(12):
        kind = KINDS[r % len(KINDS)]
        q, k = make_pair(kind, T, BITS, rng)
        if r % 3 == 1:
            q, k = q % 2 + 100, k % 2 + 100          # two symbols of one group
        cols.append((q, k))
    q = np.stack([c[0] for c in cols], axis=1)[None].astype(np.int32)
    k = np.stack([c[1] for c in cols], axis=1)[None].astype(np.int32)
    together = rosa_match(q, k, BITS, num_threads=1, want_cf=True)
    for r in range(q.shape[2]):
        alone = rosa_match(q[:, :, r:r + 1], k[:, :, r:r + 1], BITS, num_threads=1, want_cf=True)
        assert torch.equal(together.tau[:, r:r + 1], alone.tau)
        nq = int(alone.num_q_runs[0, 0])
        assert torch.equal(together.cf[:, r:r + 1, :nq], alone.cf[:, :, :nq])


def test_match_into_narrow_outputs():
    """The pipeline's entry (cached arenas that keep rows between calls, int16 results, dynamic pair schedule) on
    the fast loop equals the generic loop, three calls in a row with different inputs."""
    rng = np.random.default_rng(11)
    for call in range(3):
        q, k = adversarial(3000, rng)
        if call == 1:
            q, k = q[:, :, ::-1].copy(), k[:, :, ::-1].copy()
        qt = torch.from_numpy(q).permute(0, 2, 1).contiguous().to(torch.uint8)
        kt = torch.from_numpy(k).permute(0, 2, 1).contiguous().to(torch.uint8)
        fast = match_narrow(qt, kt, BITS, 2, _mode=MODE_HYBRID)
        generic = match_narrow(qt, kt, BITS, 2, _mode=MODE_HYBRID | MODE_GENERIC)
        assert all(torch.equal(a, b) for a, b in zip(fast, generic))


def test_streams_keep_whole_rows():
    """A stream's pairs are scanned by the generic loop (their journaled chunks read rows whole): chunked and
    journaled bits-8 scans equal rosa_match, whose batch pairs take the fast loop."""
    rng = np.random.default_rng(2)
    T = 900
    q, k = adversarial(T, rng)
    expected = rosa_match(q, k, BITS, want_cf=False).tau
    stream = RosaStream(1, q.shape[2], BITS)
    got, t = [], 0
    while t < T:
        size = int(min(T - t, rng.choice([1, 7, 50, 200])))
        if rng.random() < 0.3:
            stream.scan(q[:, t:t + size], k[:, t:t + size], journal=True)
            stream.rollback(size)
        got.append(stream.scan(q[:, t:t + size], k[:, t:t + size]))
        t += size
    assert torch.equal(torch.cat(got, dim=2), expected)
