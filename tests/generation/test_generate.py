"""HF generate() on ROSA models: greedy, sampling, eos, left-padded batches, chunked prefill, KV cache."""
import pytest
import torch

from rosa_lightning.generation import RosaGenerationCache, kv_cache_nbytes

from .helpers import VOCAB, full_logits, left_pad, tiny_model

WINDOW = 8


@pytest.fixture(scope="module")
def model():
    return tiny_model(token_channel="shared", window=WINDOW)


def _prompt(seed: int, length: int = 12, batch: int = 1) -> torch.Tensor:
    ids = torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 3:7] = 9  # a run of one token
    return ids


def _greedy_reference(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by re-running the full-sequence forward for every new token."""
    seq = prompt
    for _ in range(steps):
        nxt = full_logits(model, seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


def test_greedy_equals_full_forward_loop(model):
    prompt = _prompt(0)
    out = model.generate(prompt, max_new_tokens=20, do_sample=False)
    assert out.shape == (1, 32)
    assert torch.equal(out, _greedy_reference(model, prompt, 20))


def test_greedy_scores_equal_full_forward(model):
    prompt = _prompt(1)
    out = model.generate(prompt, max_new_tokens=10, do_sample=False, return_dict_in_generate=True,
                         output_logits=True)
    want = full_logits(model, out.sequences)[:, prompt.shape[1] - 1:-1]
    torch.testing.assert_close(torch.stack(out.logits, dim=1), want, atol=1e-5, rtol=0)


def test_sampling_equals_uncached_sampling(model):
    """Same seed, same samples as generate(use_cache=False), which re-runs the full forward each step."""
    prompt = _prompt(2, batch=2)
    kw = dict(max_new_tokens=16, do_sample=True, temperature=0.7, top_p=0.9, top_k=0)
    torch.manual_seed(123)
    cached = model.generate(prompt, **kw)
    torch.manual_seed(123)
    uncached = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_eos_stops_and_pads(model):
    prompt = _prompt(0)
    free = model.generate(prompt, max_new_tokens=20, do_sample=False)[0, prompt.shape[1]:]
    eos = int(free[4])
    first = int((free == eos).nonzero()[0])
    out = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert out.shape[1] == prompt.shape[1] + first + 1 and int(out[0, -1]) == eos


def test_left_padded_batch_equals_single_rows(model):
    prompts = [_prompt(3, 12)[0], _prompt(4, 7)[0], _prompt(5, 1)[0]]
    ids, mask = left_pad(prompts)
    width = ids.shape[1]
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    for b, p in enumerate(prompts):
        single = model.generate(p[None], max_new_tokens=12, do_sample=False)
        assert torch.equal(out[b, width - len(p):], single[0]), f"row {b}"


def test_chunked_prefill_and_num_return_sequences(model):
    prompt = _prompt(6, 17)
    want = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False, prefill_chunk_size=5), want)
    # top_k=1 sampling is greedy; the ROSA state is sized for the expanded batch
    both = model.generate(prompt, max_new_tokens=8, do_sample=True, top_k=1, num_return_sequences=2)
    assert torch.equal(both, want.expand(2, -1))


def test_sliding_window_kv_cache(model):
    """transformers' DynamicCache keeps only W-1 positions for sliding layers; the global layer keeps all."""
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    prompt = _prompt(7, 20)
    out = model.generate(prompt, max_new_tokens=10, do_sample=False, return_dict_in_generate=True)
    layers = kv_cache_nbytes(out.cache)
    assert [l["type"] for l in layers] == ["DynamicLayer", "DynamicSlidingWindowLayer"]
    seen = prompt.shape[1] + 10 - 1  # the last token is never fed back
    per_token = 2 * model.config.num_key_value_heads * model.config.head_dim * 4  # K + V, fp32
    assert layers[0]["tokens"] == seen and layers[0]["bytes"] == seen * per_token
    assert layers[1]["tokens"] == WINDOW - 1 and layers[1]["bytes"] == (WINDOW - 1) * per_token


def test_fresh_state_per_call_and_given_cache(model):
    prompt = _prompt(8)
    rc = RosaGenerationCache.for_model(model)
    a = model.generate(prompt, max_new_tokens=6, do_sample=False, rosa_cache=rc)
    assert rc.length == prompt.shape[1] + 6 - 1 and rc.nbytes()["total"] > 0
    b = model.generate(prompt, max_new_tokens=6, do_sample=False, rosa_cache=rc)  # reset, not continued
    assert torch.equal(a, b) and rc.length == prompt.shape[1] + 6 - 1


def test_unsupported_modes_raise(model):
    prompt = _prompt(9)
    with pytest.raises(NotImplementedError, match="beam"):
        model.generate(prompt, max_new_tokens=2, num_beams=2)
    with pytest.raises(ValueError, match="rosa_token_ids"):
        model.generate(prompt, max_new_tokens=2, rosa_token_ids=prompt)
