"""The native kernel against the vectors, the reference (docs/retrieval.md §3) and the oracle (docs/retrieval.md §4)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rosa_lightning.retrieval import rosa_match
from rosa_lightning.retrieval._native import MODE_GENERIC, MODE_HYBRID, MODE_LCT, MODE_NAIVE, MODE_WIDE
from rosa_lightning.retrieval.reference import (
    flipped_cf_times,
    scan_pair_oracle,
    scan_pair_reference,
)

from ._gen import KINDS, make_pair
from ._vectors import load_cases

CASES = load_cases()
# uint16 state ids are the default at these lengths; MODE_WIDE forces the int32 layout. At bits = 4 the narrow naive
# path runs the one-loop scan (cython_ext/naive16.pxi); MODE_GENERIC keeps it on the generic loop.
MODES = {"hybrid": MODE_HYBRID, "naive": MODE_NAIVE, "lct": MODE_LCT,
         "naive_wide": MODE_NAIVE | MODE_WIDE, "lct_wide": MODE_LCT | MODE_WIDE, "naive_generic": MODE_NAIVE | MODE_GENERIC}


def run_pair(q, k, bits, mode=MODE_HYBRID, want_cf=True):
    q = np.asarray(q, dtype=np.int32)[None, :, None]
    k = np.asarray(k, dtype=np.int32)[None, :, None]
    return rosa_match(q, k, bits, num_threads=1, want_cf=want_cf, _mode=mode)


def assert_matches(m, expected, q, bits):
    """Kernel output of pair (0, 0) equals a per-pair result dict of the reference or oracle."""
    assert m.tau[0, 0].tolist() == expected["tau"]
    assert m.q_run_id()[0, 0].tolist() == expected["q_run_id"]
    flipped = flipped_cf_times(expected, q, bits)
    nq = len(flipped)
    assert int(m.num_q_runs[0, 0]) == nq
    assert m.cf[0, 0, :nq].tolist() == flipped
    assert (m.cf[0, 0, nq:] == -1).all()


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
@pytest.mark.parametrize("case", CASES, ids=[c["label"] for c in CASES])
def test_vector(case, mode):
    q, k, bits = case["q"], case["k"], case["M"]
    m = run_pair(q, k, bits, MODES[mode])
    assert m.tau[0, 0].tolist() == case["tau"]
    ref = scan_pair_reference(q, k, bits)
    assert m.q_run_id()[0, 0].tolist() == case.get("q_run_id", ref["q_run_id"])
    if "r_cf_run" in case:
        assert ref["k_run_start"] == case.get("k_run_start", ref["k_run_start"])
        expected = dict(ref, r_cf_run=case["r_cf_run"])
        assert m.cf[0, 0, : len(case["r_cf_run"])].tolist() == flipped_cf_times(expected, q, bits)
        # docs/retrieval.md §8.2: cf_tau of the kernel equals the per-position expansion of r_cf_run.
        cf_tau = m.cf_tau()[0, 0]
        s = ref["k_run_start"]
        for t in range(len(q)):
            for j in range(bits):
                for beta in (0, 1):
                    n = case["r_cf_run"][ref["q_run_id"][t]][j][beta]
                    assert int(cf_tau[t, j, beta]) == (s[n] if n >= 0 else -1)


@st.composite
def pairs(draw, max_len=64):
    kind = draw(st.sampled_from(KINDS))
    bits = draw(st.integers(1, 8))
    T = draw(st.integers(1, max_len))
    seed = draw(st.integers(0, 2**32 - 1))
    q, k = make_pair(kind, T, bits, np.random.default_rng(seed))
    return q.tolist(), k.tolist(), bits


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pairs())
def test_property_vs_reference(case, mode):
    q, k, bits = case
    assert_matches(run_pair(q, k, bits, MODES[mode]), scan_pair_reference(q, k, bits), q, bits)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pairs())
def test_property_vs_oracle(case):
    q, k, bits = case
    assert_matches(run_pair(q, k, bits), scan_pair_oracle(q, k, bits), q, bits)


@pytest.mark.parametrize("kind", KINDS)
def test_long_vs_oracle(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    bits = 2
    q, k = make_pair(kind, 2000, bits, rng)
    expected = scan_pair_oracle(q.tolist(), k.tolist(), bits)
    for mode in MODES.values():
        assert_matches(run_pair(q, k, bits, mode), expected, q.tolist(), bits)


@pytest.mark.slow
@pytest.mark.parametrize("shifted", [False, True], ids=["same", "shifted"])
def test_periodic_16k_vs_reference(shifted):
    """A periodic key at T = 16384 (the quadratic case of the published kernel) against docs/retrieval.md §3."""
    T, bits = 16384, 2
    k = np.resize(np.array([0, 1, 2, 1, 3]), T + 1)
    q = k[1:] if shifted else k[:T]
    k = k[:T]
    expected = scan_pair_reference(q.tolist(), k.tolist(), bits)
    for mode in (MODE_HYBRID, MODE_LCT):
        assert_matches(run_pair(q, k, bits, mode), expected, q.tolist(), bits)


@pytest.mark.parametrize("kind", ["uniform", "periodic"])
def test_wide_ids_beyond_uint16(kind):
    """T > 32766 runs on int32 ids; on its leading part the uint16 layout gives the same result."""
    T, bits = 40000, 4
    q, k = make_pair(kind, T, bits, np.random.default_rng(5))
    full = run_pair(q, k, bits)
    head = 30000
    narrow = run_pair(q[:head], k[:head], bits)
    assert np.array_equal(full.tau[0, 0, :head].numpy(), narrow.tau[0, 0].numpy())
    nq = int(narrow.num_q_runs[0, 0])
    assert np.array_equal(full.cf[0, 0, :nq].numpy(), narrow.cf[0, 0, :nq].numpy())
    wide = run_pair(q[:head], k[:head], bits, MODE_HYBRID | MODE_WIDE)
    assert np.array_equal(wide.tau.numpy(), narrow.tau.numpy())
    assert np.array_equal(wide.cf.numpy(), narrow.cf.numpy())
