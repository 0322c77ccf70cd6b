"""RosaStream: chunking invariance against rosa_match, left padding, state size, bad input."""
import numpy as np
import pytest
import torch

from rosa_lightning.retrieval import RosaStream, rosa_match
from rosa_lightning.retrieval._native import MODE_HYBRID, MODE_LCT, MODE_NAIVE, MODE_WIDE

from .test_match_api import batch


def chunked(stream, q, k, sizes, start=None):
    out, t = [], 0
    for i, size in enumerate(sizes):
        out.append(stream.scan(q[:, t:t + size], k[:, t:t + size], start=start if i == 0 else None))
        t += size
    return torch.cat(out, dim=2)


def random_sizes(T, rng):
    sizes = []
    while sum(sizes) < T:
        sizes.append(int(min(T - sum(sizes), rng.choice([1, 1, 2, 5, 17, 64]))))
    return sizes


@pytest.mark.parametrize("mode", [MODE_HYBRID, MODE_NAIVE, MODE_LCT, MODE_NAIVE | MODE_WIDE, MODE_LCT | MODE_WIDE],
                         ids=["hybrid", "naive", "lct", "naive_wide", "lct_wide"])
def test_chunking_invariance(mode):
    q, k = batch(T=250, seed=11)
    expected = rosa_match(q, k, 3, want_cf=False).tau
    rng = np.random.default_rng(mode)
    stream = RosaStream(2, 6, 3, num_threads=2, _mode=mode)
    for sizes in ([250], [1] * 250, random_sizes(250, rng), random_sizes(250, rng)):
        stream.reset()
        assert torch.equal(chunked(stream, q, k, sizes), expected)
        assert stream.length == 250


def test_step_and_prefill():
    q, k = batch(T=60, seed=2)
    expected = rosa_match(q, k, 3, want_cf=False).tau
    stream = RosaStream(2, 6, 3)
    got = [stream.scan(q[:, :40], k[:, :40])]
    for t in range(40, 60):
        got.append(stream.step(torch.from_numpy(q[:, t]), torch.from_numpy(k[:, t]))[..., None])
    assert torch.equal(torch.cat(got, dim=2), expected)


def test_left_padding():
    q, k = batch(T=120, seed=4)
    start = np.array([0, 23])
    stream = RosaStream(2, 6, 3)
    got = chunked(stream, q, k, [30, 1, 1, 88], start=start)
    for b, s in enumerate(start):
        row = rosa_match(q[b:b + 1, s:], k[b:b + 1, s:], 3, want_cf=False).tau[0]
        expected = torch.where(row >= 0, row + int(s), row)
        assert torch.equal(got[b, :, s:], expected)
        assert (got[b, :, :s] == -1).all()


def test_long_periodic_stream_switches_path():
    T = 6000
    k = np.resize(np.array([0, 1, 2]), (1, T, 1)).reshape(1, T, 1) * 0
    k[0, :, 0] = np.resize([0, 1, 2], T)
    q = np.roll(k, -1, axis=1)
    expected = rosa_match(q, k, 2, want_cf=False).tau
    stream = RosaStream(1, 1, 2)
    got = chunked(stream, q, k, [1000] + [1] * 200 + [T - 1200])
    assert torch.equal(got, expected)
    assert stream._state.lct_pairs() == 1
    per_token = stream.nbytes() / T
    assert per_token < 2 * (4 + 7) * 4 + 16


@pytest.mark.parametrize("mode", [MODE_HYBRID, MODE_LCT], ids=["hybrid", "lct"])
def test_stream_widens_ids_in_place(mode):
    """A stream starts on uint16 ids and converts to int32 in place once its states could
    outgrow them; the result stays equal to the batch scan (which is int32 at this length)."""
    T = 50000
    rng = np.random.default_rng(7)
    q = rng.integers(0, 16, (1, T, 2)).astype(np.uint8)
    k = rng.integers(0, 16, (1, T, 2)).astype(np.uint8)
    k[0, :, 1] = np.resize([3, 1, 4, 1, 5, 9, 2, 6], T)      # periodic: the LCT path in hybrid
    q[0, :, 1] = np.roll(k[0, :, 1], -1)
    expected = rosa_match(q, k, 4, want_cf=False).tau
    stream = RosaStream(1, 2, 4, num_threads=1, _mode=mode)
    got = [stream.scan(q[:, :20000], k[:, :20000])]
    assert stream._state.wide_pairs() == 0
    for t in range(20000, 25000, 1000):
        got.append(stream.scan(q[:, t:t + 1000], k[:, t:t + 1000]))
    assert stream._state.wide_pairs() == 0
    got.append(stream.scan(q[:, 25000:], k[:, 25000:]))     # 2 * 25000 more states could not fit
    assert stream._state.wide_pairs() == 2
    assert torch.equal(torch.cat(got, dim=2), expected)


def test_bad_input():
    stream = RosaStream(2, 3, 2)
    with pytest.raises(ValueError, match=r"q must have shape \[2, Tc, 3\]"):
        stream.scan(np.zeros((2, 4, 2), np.uint8), np.zeros((2, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="Tc >= 1"):
        stream.scan(np.zeros((2, 0, 3), np.uint8), np.zeros((2, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="k symbols"):
        stream.scan(np.zeros((2, 4, 3), np.uint8), np.full((2, 4, 3), 4, np.uint8))
    with pytest.raises(ValueError, match="start values"):
        stream.scan(np.zeros((2, 4, 3), np.uint8), np.zeros((2, 4, 3), np.uint8), start=[0, 5])
    stream.scan(np.zeros((2, 4, 3), np.uint8), np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="first chunk"):
        stream.scan(np.zeros((2, 1, 3), np.uint8), np.zeros((2, 1, 3), np.uint8), start=[0, 0])
    with pytest.raises(ValueError, match="q_t must have shape"):
        stream.step(np.zeros((2, 1, 3), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="batch"):
        RosaStream(0, 3, 2)
    with pytest.raises(ValueError, match="bits"):
        RosaStream(1, 3, 9)
