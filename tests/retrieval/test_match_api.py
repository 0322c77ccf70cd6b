"""rosa_match as an interface: batching, layouts, threads, buffers, invariants, bad input."""
import numpy as np
import pytest
import torch

from rosa_lightning.retrieval import RosaBuffers, rosa_match
from rosa_lightning.retrieval.reference import k_runs, rosa_match_reference

from ._gen import KINDS, make_pair


def batch(B=2, T=300, R=6, bits=3, seed=0):
    """[B, T, R] q, k with every kind of pair mixed in."""
    rng = np.random.default_rng(seed)
    q = np.zeros((B, T, R), dtype=np.int32)
    k = np.zeros((B, T, R), dtype=np.int32)
    for b in range(B):
        for r in range(R):
            q[b, :, r], k[b, :, r] = make_pair(KINDS[(b * R + r) % len(KINDS)], T, bits, rng)
    return q, k


def assert_same(a, b):
    assert torch.equal(a.tau, b.tau)
    assert torch.equal(a.num_q_runs, b.num_q_runs)
    assert torch.equal(a.q_sym, b.q_sym)
    assert (a.cf is None) == (b.cf is None)
    if a.cf is not None:
        assert torch.equal(a.cf, b.cf)


def test_batch_equals_reference():
    q, k = batch(T=120)
    assert_same(rosa_match(q, k, 3), rosa_match_reference(q, k, 3))


def test_layouts_dtypes_and_threads_agree():
    q, k = batch()
    base = rosa_match(q, k, 3, num_threads=1)
    assert base.tau.dtype == torch.int32 and base.tau.shape == (2, 6, 300)
    assert base.cf.shape[:2] == (2, 6) and base.cf.shape[3] == 3
    assert base.cf.shape[2] == int(base.num_q_runs.max())
    for threads in (2, 3, 7):
        assert_same(rosa_match(q, k, 3, num_threads=threads), base)
    qt, kt = np.ascontiguousarray(q.transpose(0, 2, 1)), np.ascontiguousarray(k.transpose(0, 2, 1))
    assert_same(rosa_match(qt, kt, 3, layout="BRT"), base)
    for conv in (lambda x: torch.from_numpy(x).to(torch.uint8), lambda x: torch.from_numpy(x).long(),
                 lambda x: x.astype(np.uint8)):
        assert_same(rosa_match(conv(q), conv(k), 3), base)
    # Non-contiguous input is copied.
    assert_same(rosa_match(qt.transpose(0, 2, 1), kt.transpose(0, 2, 1), 3), base)
    no_cf = rosa_match(q, k, 3, want_cf=False)
    assert no_cf.cf is None and torch.equal(no_cf.tau, base.tau)


def test_buffers_are_used_and_grown():
    q, k = batch()
    base = rosa_match(q, k, 3)
    buf = RosaBuffers.allocate(2, 6, 400, 3, max_q_runs=2)
    got = rosa_match(q, k, 3, out=buf)
    assert_same(got, base)
    assert got.tau.data_ptr() == buf.tau.data_ptr()
    assert buf.cf.numel() >= got.cf.numel() and got.cf.data_ptr() == buf.cf.data_ptr()
    with pytest.raises(ValueError, match="holds .* elements"):
        rosa_match(q, k, 3, out=RosaBuffers.allocate(1, 6, 300, 3))


def test_invariants_and_prefix():
    q, k = batch(T=200, seed=3)
    m = rosa_match(q, k, 3)
    T = q.shape[1]
    for b in range(q.shape[0]):
        for r in range(q.shape[2]):
            tau = m.tau[b, r].numpy()
            starts = set(k_runs(k[b, :, r].tolist())[0])
            assert all(-1 <= x <= t for t, x in enumerate(tau))
            assert all(x == -1 or x in starts for x in tau)
    for cut in (1, 17, 99):
        pre = rosa_match(q[:, :cut], k[:, :cut], 3)
        assert torch.equal(pre.tau, m.tau[..., :cut])
        nq = pre.cf.shape[2]
        # Q-runs cut in the middle keep their start, hence their counterfactuals.
        assert torch.equal(pre.cf, m.cf[:, :, :nq].where(
            torch.arange(nq)[None, None, :, None] < pre.num_q_runs[..., None, None], torch.tensor(-1)))
    assert T == 200


def test_cf_tau_unflipped_entry_is_tau():
    q, k = batch(T=80, seed=5)
    m = rosa_match(q, k, 3)
    cf_tau = m.cf_tau()
    qs = m.q_sym.long()
    starts = torch.ones_like(qs, dtype=torch.bool)
    starts[..., 1:] = qs[..., 1:] != qs[..., :-1]
    for j in range(3):
        bit = (qs >> j) & 1
        unflipped = torch.gather(cf_tau[..., j, :], -1, bit.unsqueeze(-1)).squeeze(-1)
        assert torch.equal(unflipped[starts], m.tau[starts])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(q=np.zeros((2, 3), np.uint8)), ValueError, "q must have rank 3"),
        (dict(k=np.zeros((1, 4, 2, 1), np.uint8)), ValueError, "k must have rank 3"),
        (dict(q=np.zeros((1, 4, 2), np.float32)), TypeError, "q must have dtype"),
        (dict(k=np.zeros((1, 4, 2), np.int16)), TypeError, "k must have dtype"),
        (dict(q=[[[0]]]), TypeError, "q must be a numpy array"),
        (dict(q=np.full((1, 4, 2), 8, np.int32)), ValueError, r"q symbols must lie in \[0, 8\)"),
        (dict(k=np.full((1, 4, 2), -1, np.int32)), ValueError, "k symbols must lie"),
        (dict(bits=0), ValueError, "bits must be in 1..8"),
        (dict(bits=9), ValueError, "bits must be in 1..8"),
        (dict(bits=2.0), TypeError, "bits must be an int"),
        (dict(q=np.zeros((1, 0, 2), np.uint8), k=np.zeros((1, 0, 2), np.uint8)), ValueError, "T >= 1"),
        (dict(k=np.zeros((1, 5, 2), np.uint8)), ValueError, "same shape"),
        (dict(layout="TBR"), ValueError, "layout"),
        (dict(num_threads=0), ValueError, "num_threads"),
        (dict(out=dict()), TypeError, "RosaBuffers"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(q=np.zeros((1, 4, 2), np.uint8), k=np.zeros((1, 4, 2), np.uint8), bits=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        rosa_match(args.pop("q"), args.pop("k"), args.pop("bits"), **args)


def test_too_long_is_rejected(monkeypatch):
    from rosa_lightning.retrieval import match as match_module

    monkeypatch.setattr(match_module, "MAX_LENGTH", 3)
    with pytest.raises(ValueError, match="exceeds"):
        rosa_match(np.zeros((1, 4, 1), np.uint8), np.zeros((1, 4, 1), np.uint8), 1)
