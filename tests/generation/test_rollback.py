"""Rollback of the streaming ROSA state (docs/generation.md §8): after ``rollback(k)`` every stream continues exactly
as a stream fed only the kept prefix, checked against the batch kernels over the kept history on random and periodic
streams, in every internal mode of the automaton (naive, link-cut tree, hybrid, 16- and 32-bit ids)."""
import numpy as np
import pytest
import torch

from rosa_lightning.retrieval import RosaStream, rosa_match
from rosa_lightning.retrieval._native import MODE_HYBRID, MODE_LCT, MODE_NAIVE, MODE_WIDE
from rosa_lightning.retrieval.tokens import TokenStream, rosa_next_token
from rosa_lightning.retrieval.values import ValueStore

MODES = [MODE_HYBRID, MODE_NAIVE, MODE_LCT, MODE_NAIVE | MODE_WIDE, MODE_LCT | MODE_WIDE]
MODE_IDS = ["hybrid", "naive", "lct", "naive_wide", "lct_wide"]


def symbols(kind, B, T, R, bits, rng):
    """q, k uint8 [B, T, R]: uniform, periodic (a short pattern repeated, the case that is quadratic for the naive
    walk), or copy-shaped (the second half repeats the first)."""
    A = 1 << bits
    if kind == "uniform":
        return (rng.integers(0, A, (B, T, R), dtype=np.uint8), rng.integers(0, A, (B, T, R), dtype=np.uint8))
    if kind == "periodic":
        period = rng.integers(1, 4, size=(B, 1, R))
        t = np.arange(T).reshape(1, T, 1)
        k = ((t % period) % A).astype(np.uint8)
        q = (((t + 1) % period) % A).astype(np.uint8)
        return q, k
    half = rng.integers(0, A, (B, (T + 1) // 2, R), dtype=np.uint8)
    k = np.concatenate([half, half], axis=1)[:, :T]
    q = np.roll(k, -1, axis=1)
    return q, k


def drive_rosa(stream, q, k, bits, rng, max_chunk=9):
    """Journaled chunks with random rollbacks; every chunk's tau must equal rosa_match over the kept history plus the
    chunk. Returns the kept history (q, k)."""
    B, T, R = q.shape
    kept_q, kept_k = [q[:, :1]], [k[:, :1]]
    stream.scan(q[:, :1], k[:, :1])
    t = 1
    while t < T:
        c = int(min(T - t, rng.integers(1, max_chunk + 1)))
        cq, ck = q[:, t:t + c], k[:, t:t + c]
        hq, hk = np.concatenate(kept_q + [cq], axis=1), np.concatenate(kept_k + [ck], axis=1)
        tau = stream.scan(cq, ck, journal=True)
        expected = rosa_match(np.ascontiguousarray(hq), np.ascontiguousarray(hk), bits, want_cf=False).tau
        assert torch.equal(tau, expected[:, :, -c:]), f"tau differs after a rollback (position {t})"
        undo = int(rng.integers(0, c + 1))
        if undo and rng.random() < 0.3:          # two rollbacks in a row remove the same positions
            first = int(rng.integers(0, undo + 1))
            stream.rollback(first)
            stream.rollback(undo - first)
        else:
            stream.rollback(undo)
        keep = c - undo
        kept_q.append(cq[:, :keep])
        kept_k.append(ck[:, :keep])
        assert stream.length == sum(x.shape[1] for x in kept_q)
        t += c if rng.random() < 0.5 else keep  # a rejected position either comes back or is replaced by new input
        if t >= T:
            break
    return np.concatenate(kept_q, axis=1), np.concatenate(kept_k, axis=1)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("kind", ["uniform", "periodic", "copy"])
def test_rosa_stream_rollback_matches_rebuilt_state(mode, kind):
    rng = np.random.default_rng(hash((mode, kind)) % 2**32)
    for bits in (1, 3, 8):
        q, k = symbols(kind, 2, 220, 3, bits, rng)
        stream = RosaStream(2, 3, bits, num_threads=2, _mode=mode)
        hq, hk = drive_rosa(stream, q, k, bits, rng)
        # The next scans after the last rollback continue as a stream rebuilt from the kept prefix.
        tail_q, tail_k = symbols("uniform", 2, 40, 3, bits, rng)
        fresh = RosaStream(2, 3, bits, _mode=mode)
        fresh.scan(hq, hk)
        assert torch.equal(stream.scan(tail_q, tail_k), fresh.scan(tail_q, tail_k))


def test_rosa_stream_rollback_across_the_switch_to_the_link_cut_tree():
    """A long periodic key drives hybrid pairs onto the link-cut tree in the middle of a journaled chunk; rolling that
    chunk back returns them to the naive path with the exact earlier state."""
    rng = np.random.default_rng(5)
    T = 9000
    t = np.arange(T).reshape(1, T, 1)
    k = np.concatenate([(t % 2), (t % 3)], axis=2).astype(np.uint8)
    q = ((t + 1) % 2).repeat(2, axis=2).astype(np.uint8)
    stream = RosaStream(1, 2, 2, _mode=MODE_HYBRID)
    switched = None
    pos = 0
    while pos < T:
        c = min(64, T - pos)
        before = stream._state.lct_pairs()
        stream.scan(q[:, pos:pos + c], k[:, pos:pos + c], journal=True)
        if stream._state.lct_pairs() > before and switched is None:
            switched = pos
            stream.rollback(c)
            assert stream._state.lct_pairs() == before
            stream.scan(q[:, pos:pos + c], k[:, pos:pos + c], journal=True)
            stream.rollback(c // 2)
            pos += c - c // 2
            continue
        pos += c
    assert switched is not None, "the test stream never switched to the link-cut tree"
    expected = rosa_match(q, k, 2, want_cf=False).tau
    fresh_tail = RosaStream(1, 2, 2)
    fresh_tail.scan(q, k)
    tq, tk = symbols("uniform", 1, 30, 2, 2, rng)
    assert torch.equal(stream.scan(tq, tk), fresh_tail.scan(tq, tk))
    assert stream.length == T + 30 and expected.shape[2] == T


def test_rosa_stream_rollback_refusals():
    q, k = symbols("uniform", 1, 10, 2, 2, np.random.default_rng(0))
    stream = RosaStream(1, 2, 2)
    stream.scan(q[:, :5], k[:, :5])
    with pytest.raises(ValueError, match="journaled"):
        stream.rollback(1)                      # the last scan kept no journal
    stream.scan(q[:, 5:8], k[:, 5:8], journal=True)
    with pytest.raises(ValueError, match="only the last 3"):
        stream.rollback(4)
    with pytest.raises(TypeError):
        stream.rollback(1.0)
    stream.rollback(3)
    assert stream.length == 5
    with pytest.raises(ValueError, match="only the last 0"):
        stream.rollback(1)
    stream.scan(q[:, 5:8], k[:, 5:8], journal=True)
    stream.commit()
    with pytest.raises(ValueError):
        stream.rollback(1)


def test_value_store_rollback():
    store = ValueStore(1, 2)
    store.append(torch.arange(10, dtype=torch.uint8).view(1, 5, 2))
    store.rollback(2)
    assert store.length == 3
    store.append(torch.full((1, 1, 2), 99, dtype=torch.uint8))
    tau = torch.tensor([[[3, 2, -1], [0, 3, 1]]], dtype=torch.int32)
    assert store.gather(tau).tolist() == [[[99, 4, 0], [1, 99, 3]]]
    with pytest.raises(ValueError):
        store.rollback(5)


def brute_last_match(row):
    """(end, length) of docs/retrieval.md §9.1 at the last position: the latest j < t with the longest common suffix."""
    t = len(row) - 1
    best, end = 0, -1
    for j in range(t):
        n = 0
        while n <= j and row[j - n] == row[t - n]:
            n += 1
        if n > 0 and n >= best:
            best, end = n, j
    return end, best


@pytest.mark.parametrize("plain", [False, True], ids=["lct", "plain"])
@pytest.mark.parametrize("kind", ["uniform", "periodic"])
def test_token_stream_rollback_matches_rebuilt_state(plain, kind):
    rng = np.random.default_rng(7 + plain)
    B, T = 3, 400
    if kind == "uniform":
        ids = rng.integers(0, 5, (B, T))
    else:
        ids = np.stack([np.tile(np.arange(p), T)[:T] for p in (1, 2, 3)])
        ids[2, 200:] = rng.integers(0, 3, T - 200)
    stream = TokenStream(B, num_threads=2, _plain=plain)
    kept = [ids[:, :3]]
    stream.scan(ids[:, :3])
    t = 3
    while t < T:
        c = int(min(T - t, rng.integers(1, 10)))
        chunk = ids[:, t:t + c]
        history = np.concatenate(kept + [chunk], axis=1)
        out = stream.scan(chunk, journal=True)
        assert torch.equal(out, rosa_next_token(history)[:, -c:])
        undo = int(rng.integers(0, c + 1))
        stream.rollback(undo)
        kept.append(chunk[:, :c - undo])
        history = np.concatenate(kept, axis=1)
        ends, lens = stream.last_match()
        for b in range(B):
            assert (int(ends[b]), int(lens[b])) == brute_last_match(list(history[b]))
        t += c if rng.random() < 0.5 else c - undo
    history = np.concatenate(kept, axis=1)
    assert torch.equal(stream.row_tokens(), torch.full((B,), history.shape[1]))
    tail = rng.integers(0, 5, (B, 30))
    assert torch.equal(stream.scan(tail), rosa_next_token(np.concatenate([history, tail], axis=1))[:, -30:])


def test_token_stream_rollback_refusals():
    stream = TokenStream(2)
    stream.scan(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="journaled"):
        stream.rollback(1)
    with pytest.raises(ValueError, match="padding"):
        stream.scan(np.zeros((2, 4), dtype=np.int64), start=[0, 1], journal=True)
    stream.scan(np.ones((2, 2), dtype=np.int64), journal=True)
    with pytest.raises(ValueError, match="only the last 2"):
        stream.rollback(3)
    stream.rollback(2)
    assert stream.length == 4
