"""Incremental decoding equals the full-sequence forward (docs/generation.md §1), on tiny fp32 models."""
import pytest
import torch

from rosa_lightning.generation import RosaGenerationCache

from .helpers import VOCAB, full_logits, incremental_logits, prefill_then_steps, tiny_model

ATOL = 1e-5
T = 40


def _ids(seed: int, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, T), generator=g)
    ids[:, 6:15] = 5           # a long run of one token: runs of repeated symbols in every layer
    ids[:, 20:32] = torch.tensor([3, 4] * 6)  # periodic block
    ids[-1, 33:] = ids[-1, 2:9]  # a repeat of an earlier stretch
    return ids


@pytest.fixture(scope="module", params=["off", "shared", "own"])
def model(request):
    return tiny_model(token_channel=request.param)


def test_rosa_matters(model):
    """The ROSA parameters are far from zero: disabling the branch changes the logits a lot."""
    ids = _ids(0)
    with torch.no_grad():
        on = full_logits(model, ids)
        model.rosa_config.enabled = False
        try:
            off = full_logits(model, ids)
        finally:
            model.rosa_config.enabled = True
    assert (on - off).abs().max() > 0.1


@pytest.mark.parametrize("prompt", [1, 7, 14, 23])
def test_prefill_then_steps_equal_full(model, prompt):
    """Prompt ends inside the run (7), at its end (14), inside the periodic block (23), or at t=0."""
    ids = _ids(1)
    want = full_logits(model, ids)
    got = incremental_logits(model, ids, prefill_then_steps(prompt, T))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunks", [[7, 5, 13, 1, 1, 13], [1] * T, [T], [20, 20]])
def test_chunked_prefill_equal_full(model, chunks):
    ids = _ids(2)
    torch.testing.assert_close(incremental_logits(model, ids, chunks), full_logits(model, ids), atol=ATOL, rtol=0)


def test_left_padding_rows_equal_unpadded(model):
    """Rows of a left-padded batch equal their own unpadded single-row run at every real position."""
    ids = _ids(3, batch=3)
    pads = [0, 3, 11]
    width = T
    batch = torch.zeros((3, width), dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    for b, p in enumerate(pads):
        batch[b, p:] = ids[b, :width - p]
        mask[b, p:] = 1
    got = incremental_logits(model, batch, prefill_then_steps(16, width), attention_mask=mask)
    for b, p in enumerate(pads):
        want = full_logits(model, ids[b:b + 1, :width - p])
        torch.testing.assert_close(got[b:b + 1, p:], want, atol=ATOL, rtol=0)


def test_cache_reuse_after_reset(model):
    """One cache serves several sequences: every prefill starts from an empty state."""
    rc = RosaGenerationCache.for_model(model)
    a, b = _ids(4), _ids(5, batch=1)
    incremental_logits(model, a, [10] + [1] * (T - 10), rosa_cache=rc)
    got = incremental_logits(model, b, [5] + [1] * (T - 5), rosa_cache=rc)
    torch.testing.assert_close(got, full_logits(model, b), atol=ATOL, rtol=0)
