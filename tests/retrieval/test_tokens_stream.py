"""TokenStream: any split of a sequence into chunks reproduces rosa_next_token exactly."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rosa_lightning.retrieval.tokens import TokenStream, rosa_next_token


def _chunked(stream, ids, cuts):
    parts, lo = [], 0
    for hi in list(cuts) + [ids.shape[1]]:
        if hi > lo:
            parts.append(stream.scan(ids[:, lo:hi]))
            lo = hi
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("plain", [False, True])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_chunking_equals_batch(plain, data):
    t = data.draw(st.integers(1, 60))
    vocab = data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    ids = rng.integers(0, vocab, size=(3, t))
    if data.draw(st.booleans()):
        ids[1] = np.tile(np.arange(data.draw(st.integers(1, 5))), t)[:t]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, t), max_size=8))))
    stream = TokenStream(3, num_threads=2, _plain=plain)
    assert torch.equal(_chunked(stream, ids, cuts), rosa_next_token(ids))
    assert stream.length == t


def test_step_by_step_and_reset():
    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(0, 6, (2, 300)), np.tile([4, 4, 9], (1, 100))])
    expected = rosa_next_token(ids)
    stream = TokenStream(3)
    for _ in range(2):  # the second pass checks that reset forgets everything
        got = torch.stack([stream.step(torch.from_numpy(ids[:, t])) for t in range(ids.shape[1])], dim=1)
        assert torch.equal(got, expected)
        assert stream.length == 300 and stream.row_tokens().tolist() == [300, 300, 300]
        stream.reset()
        assert stream.length == 0


def test_prefill_then_decode_size_one_chunks():
    ids = np.tile(np.arange(7), (2, 600))[:, :4000]
    ids[1, 1234] = 99
    stream = TokenStream(2)
    head = stream.scan(ids[:, :3000])
    tail = torch.cat([stream.scan(ids[:, t : t + 1]) for t in range(3000, 4000)], dim=1)
    assert torch.equal(torch.cat([head, tail], dim=1), rosa_next_token(ids))


def test_left_padded_prefill_then_steps():
    rng = np.random.default_rng(5)
    prompt = rng.integers(0, 3, (3, 20))
    start = np.array([0, 4, 11])
    prompt[1, :4] = 0  # pad ids; never read
    cont = rng.integers(0, 3, (3, 15))
    stream = TokenStream(3)
    pre = stream.scan(prompt, start=start)
    steps = torch.stack([stream.step(cont[:, i]) for i in range(15)], dim=1)
    for b in range(3):
        row = np.concatenate([prompt[b, start[b] :], cont[b]])
        full = rosa_next_token(row[None])[0]
        assert (pre[b, : start[b]] == -1).all()
        assert torch.equal(torch.cat([pre[b, start[b] :], steps[b]]), full)


def test_nbytes_grows_with_tokens_and_is_kept_by_reset():
    stream = TokenStream(2)
    small = stream.nbytes()
    stream.scan(np.random.default_rng(0).integers(0, 151936, (2, 5000)))
    big = stream.nbytes()
    assert big > small and big / (2 * 5000) < 400  # bytes per token, capacities included
    stream.reset()
    assert stream.nbytes() == big


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda s: s.scan(np.zeros((3, 4), np.int64)), ValueError, "B=2 rows"),
        (lambda s: s.scan(np.zeros((2, 0), np.int64)), ValueError, "T >= 1"),
        (lambda s: s.scan(np.zeros((2, 4), np.float64)), TypeError, "dtype int32 or int64"),
        (lambda s: s.scan(np.full((2, 4), -3)), ValueError, "non-negative"),
        (lambda s: s.step(np.zeros((2, 1), np.int64)), ValueError, "rank 1"),
        (lambda s: s.step(np.zeros(3, np.int64)), ValueError, r"shape \[B\]"),
        (lambda s: s.step([1, 2]), TypeError, "ids_t must be a numpy array"),
    ],
)
def test_bad_stream_inputs(call, exc, words):
    with pytest.raises(exc, match=words):
        call(TokenStream(2))


@pytest.mark.parametrize("batch", [0, -1, 2.0, None])
def test_bad_batch(batch):
    with pytest.raises(ValueError, match="batch must be a positive int"):
        TokenStream(batch)
