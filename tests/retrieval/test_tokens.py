"""Token channel: native kernel vs the oracle and the reference (docs/retrieval.md §9.1, §9.2)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rosa_lightning.retrieval.tokens import rosa_next_token
from rosa_lightning.retrieval.tokens_reference import next_token_bruteforce, next_token_reference


def _both(rows, **kw):
    """Kernel output with the link-cut tree and with the plain walk; they must agree."""
    fast = rosa_next_token(rows, **kw)
    plain = rosa_next_token(rows, _plain=True, **kw)
    assert torch.equal(fast, plain)
    return fast


@pytest.mark.parametrize(
    "x, y",
    [
        ([0, 1, 0, 1], [-1, -1, 1, 0]),  # (a)
        ([5, 5, 5, 5], [-1, 5, 5, 5]),  # (b): overlapping occurrences, y may equal x[t]
        ([1, 2, 3, 9, 2, 1, 2], [-1, -1, -1, -1, 3, 2, 3]),  # (c): longest beats latest
    ],
)
def test_spec_examples(x, y):
    assert next_token_bruteforce(x) == y
    assert next_token_reference(x) == y
    out = _both(np.array([x], dtype=np.int64))
    assert out.dtype == torch.int64 and out.shape == (1, len(x))
    assert out[0].tolist() == y


def _rows_strategy(max_t=48):
    """Batches of rows in the shapes that stress the automaton: tiny vocab, periods, runs, XX."""
    vocab = st.integers(1, 4)

    @st.composite
    def rows(draw):
        kind = draw(st.sampled_from(["uniform", "periodic", "runs", "copy", "big_ids"]))
        t = draw(st.integers(1, max_t))
        v = draw(vocab)
        if kind == "uniform":
            x = draw(st.lists(st.integers(0, v - 1), min_size=t, max_size=t))
        elif kind == "periodic":
            block = draw(st.lists(st.integers(0, v), min_size=1, max_size=6))
            x = (block * (t // len(block) + 1))[:t]
            if draw(st.booleans()):  # a periodic stream with a glitch
                x[draw(st.integers(0, t - 1))] = v + 1
        elif kind == "runs":
            x = []
            while len(x) < t:
                x += [draw(st.integers(0, v - 1))] * draw(st.integers(1, 12))
            x = x[:t]
        elif kind == "copy":
            half = draw(st.lists(st.integers(0, v), min_size=1, max_size=max(1, t // 2)))
            x = half + half
        else:  # ids near 2**40 and int64 max, few distinct values so they repeat
            base = draw(st.sampled_from([2**40 - 3, 2**63 - 8, 151935]))
            x = [base + d for d in draw(st.lists(st.integers(0, min(v, 7)), min_size=t, max_size=t))]
        return x

    return rows()


@settings(max_examples=600, deadline=None)
@given(_rows_strategy())
def test_kernel_matches_bruteforce(x):
    expected = next_token_bruteforce(x)
    assert _both(np.array([x], dtype=np.int64))[0].tolist() == expected


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=300, max_size=600))
def test_kernel_matches_reference_longer(x):
    assert _both(np.array([x], dtype=np.int64))[0].tolist() == next_token_reference(x)


def test_kernel_matches_reference_t2000():
    rng = np.random.default_rng(7)
    rows = [rng.integers(0, 3, 2000), np.tile(rng.integers(0, 9, 13), 200)[:2000], rng.integers(0, 40, 2000)]
    out = _both(np.stack(rows))
    for b, row in enumerate(rows):
        assert out[b].tolist() == next_token_reference(row.tolist())


def test_batch_rows_independent_and_dtypes():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, size=(6, 50))
    expected = [next_token_bruteforce(r) for r in ids.tolist()]
    for arr in (ids, ids.astype(np.int32), torch.from_numpy(ids), torch.from_numpy(ids.astype(np.int32))):
        assert rosa_next_token(arr).tolist() == expected
    # non-contiguous input is copied, not misread
    wide = np.repeat(ids, 2, axis=1)[:, ::2]
    assert rosa_next_token(wide).tolist() == expected


def test_thread_count_invariance():
    rng = np.random.default_rng(2)
    ids = np.concatenate([rng.integers(0, 4, (5, 700)), np.tile(np.arange(3), (3, 234))[:, :700]])
    ref = rosa_next_token(ids, num_threads=1)
    for n in (2, 3, 8, 64):
        assert torch.equal(rosa_next_token(ids, num_threads=n), ref)


def test_left_and_right_padding():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 4, size=(4, 40))
    start = np.array([0, 5, 17, 40])
    lengths = np.array([40, 33, 40, 40])
    ids[1, :5] = -7  # padding ids are never read, even invalid ones
    out = _both(ids, start=torch.from_numpy(start), lengths=lengths)
    for b in range(4):
        lo, hi = start[b], lengths[b]
        row = [-1] * 40
        row[lo:hi] = next_token_bruteforce(ids[b, lo:hi].tolist())
        assert out[b].tolist() == row
    assert torch.equal(rosa_next_token(ids[:1], start=0, lengths=40), rosa_next_token(ids[:1]))


def test_periodic_16384_is_fast():
    """Period-1 and period-2 text: the plain latest-end walk is quadratic here, the kernel is not."""
    import time

    period = np.tile(np.array([3, 8]), 8192)[None]
    t0 = time.perf_counter()
    out = rosa_next_token(np.concatenate([period, np.full((1, 16384), 5)]), num_threads=1)
    assert time.perf_counter() - t0 < 2.0
    assert out[0, :2].tolist() == [-1, -1] and (out[0, 2:].numpy() == period[0, 1:-1]).all()  # y[t] = x[t-1]
    assert out[1, 0] == -1 and (out[1, 1:] == 5).all()


def test_periodic_16384_matches_plain_walk():
    for p in (1, 3, 64):
        ids = np.tile(np.arange(p) * 1000, 16384 // p + 1)[None, :16384]
        ids[0, 9000] = 7  # a break in the period
        assert torch.equal(rosa_next_token(ids), rosa_next_token(ids, _plain=True))


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(ids=[[1, 2]]), TypeError, "ids must be a numpy array"),
        (dict(ids=np.zeros((2, 3), np.float32)), TypeError, "dtype int32 or int64"),
        (dict(ids=np.zeros((2, 3), np.uint8)), TypeError, "dtype int32 or int64"),
        (dict(ids=np.zeros(3, np.int64)), ValueError, "rank 2"),
        (dict(ids=np.zeros((1, 2, 3), np.int64)), ValueError, "rank 2"),
        (dict(ids=np.zeros((2, 0), np.int64)), ValueError, "T >= 1"),
        (dict(ids=np.array([[1, -2]])), ValueError, "non-negative"),
        (dict(ids=np.zeros((2, 3), np.int64), num_threads=0), ValueError, "num_threads"),
        (dict(ids=np.zeros((2, 3), np.int64), start=[0]), ValueError, "start must have shape"),
        (dict(ids=np.zeros((2, 3), np.int64), start=[0, 4]), ValueError, "start must lie in"),
        (dict(ids=np.zeros((2, 3), np.int64), lengths=[-1, 3]), ValueError, "lengths must lie in"),
        (dict(ids=np.zeros((2, 3), np.int64), start=[2, 0], lengths=[1, 3]), ValueError, "must not exceed"),
        (dict(ids=np.zeros((2, 3), np.int64), start=[0.5, 1.0]), TypeError, "start must hold integers"),
    ],
)
def test_bad_inputs(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        rosa_next_token(**kwargs)
