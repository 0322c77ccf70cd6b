"""ROSA-native speculative decoding (docs/generation.md §8): the output is token for token plain greedy decoding, with
and without the token channel, with a global layer and with every layer windowed, with streamed branch-input state,
batch 1 and left-padded batches; drafts of every acceptance length (a drafter that knows the answer and errs at
random) exercise rollbacks of every size, past the attention window; clear refusals."""
import numpy as np
import pytest
import torch

from rosa_lightning.generation import RosaGenerationCache
from rosa_lightning.modeling import RosaConfig, build_rosa_model
from rosa_lightning.modeling import generate as gen
from rosa_lightning.modeling.generate import SpeculativeConfig, SuffixDrafter, speculative_greedy

from .helpers import VOCAB, activate_branches, left_pad, tiny_config, tiny_model

WINDOW = 8


def _model(token_channel="off", global_layers=1, enabled=True, **inputs):
    torch.manual_seed(0)
    rosa = RosaConfig(window=WINDOW, global_layers=global_layers, token_channel=token_channel, inputs=inputs,
                      runtime=dict(num_threads=1, enabled=enabled))
    model = build_rosa_model(tiny_config(), rosa).eval()
    g = activate_branches(model, 0)
    with torch.no_grad():
        for p in (getattr(model, "rosa_token", None) or torch.nn.Module()).parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


VARIANTS = {
    "global+window": dict(),
    "all_windowed": dict(global_layers=0),
    "token_channel": dict(token_channel="shared"),
    "token_channel_all_windowed": dict(token_channel="shared", global_layers=0),
    "branch_inputs_streamed": dict(kv_shift=True, center_u="causal_mean"),
    "rosa_off": dict(enabled=False),
}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def model(request):
    return _model(**VARIANTS[request.param])


def _prompt(seed, length=24, batch=1):
    g = torch.Generator().manual_seed(seed)
    motif = torch.randint(1, VOCAB, (batch, 6), generator=g)
    ids = torch.cat([torch.randint(1, VOCAB, (batch, length - 12), generator=g), motif, motif], dim=1)
    return ids  # ends in a repeat, so the drafter proposes something


class OracleDrafter(SuffixDrafter):
    """Proposes the true greedy continuation, each token replaced by a wrong one with probability 0.3, and lengths
    from 0 to num_draft: every acceptance length and every rollback size occurs."""

    answer: list = []
    rng = np.random.default_rng(0)

    def propose(self, history, pending, limit):
        n = int(self.rng.integers(0, min(limit, self.num_draft) + 1))
        start = len(history) - self.prompt_len
        draft = list(self.answer[start:start + n])
        for i in range(len(draft)):
            if self.rng.random() < 0.3:
                draft[i] = (draft[i] + 1 + int(self.rng.integers(0, VOCAB - 2))) % VOCAB
        return draft


def test_greedy_identical_with_suffix_drafts(model):
    prompt = _prompt(1)
    want = model.generate(prompt, max_new_tokens=24, do_sample=False)
    for spec in ({"num_draft": 4, "min_match": 1}, 1):
        got = model.generate(prompt, max_new_tokens=24, do_sample=False, rosa_speculative=spec)
        assert torch.equal(got, want), spec


def test_greedy_identical_under_random_acceptance(model, monkeypatch):
    """Drafts accepted in part at random points: every kind of rollback, past the window of the sliding layers."""
    prompt = _prompt(2, length=20)
    max_new = 36
    want = model.generate(prompt, max_new_tokens=max_new, do_sample=False)
    OracleDrafter.answer = want[0, prompt.shape[1]:].tolist()
    OracleDrafter.prompt_len = prompt.shape[1]
    monkeypatch.setattr(gen, "SuffixDrafter", OracleDrafter)
    for seed in range(3):
        OracleDrafter.rng = np.random.default_rng(seed)
        out = speculative_greedy(model, prompt, max_new_tokens=max_new, num_draft=6, min_match=1)
        assert torch.equal(out.sequences, want), f"seed {seed}"
        s = out.stats
        assert s.new_tokens == max_new and 0 < s.accepted < s.drafted
        assert s.forwards < max_new - 1 and s.mean_accepted > 1


def test_left_padded_batch(model):
    prompts = [_prompt(3, 24)[0], _prompt(4, 15)[0], _prompt(5, 13)[0]]
    ids, mask = left_pad(prompts)
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    want = model.generate(ids, **kw)
    got = model.generate(ids, rosa_speculative={"num_draft": 5, "min_match": 1}, **kw)
    assert torch.equal(got, want)


def test_eos_and_prompt_lookup_mapping():
    model = _model(token_channel="shared")
    prompt = _prompt(6)
    free = model.generate(prompt, max_new_tokens=20, do_sample=False)[0, prompt.shape[1]:]
    eos = int(free[7])
    want = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=0)
    got = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=0,
                         prompt_lookup_num_tokens=4)
    assert torch.equal(got, want) and int(got[0, -1]) == eos
    rc = RosaGenerationCache.for_model(model)
    got = model.generate(prompt, max_new_tokens=20, do_sample=False, rosa_cache=rc, rosa_speculative=True)
    assert torch.equal(got, model.generate(prompt, max_new_tokens=20, do_sample=False))
    assert rc.length == got.shape[1] - 1  # the state holds every fed token, and nothing rolled back is left


def test_refusals():
    model = tiny_model()
    prompt = _prompt(7)
    with pytest.raises(NotImplementedError, match="acceptance rule"):
        model.generate(prompt, max_new_tokens=4, do_sample=True, rosa_speculative=True)
    with pytest.raises(NotImplementedError, match="num_beams"):
        model.generate(prompt, max_new_tokens=4, num_beams=2, rosa_speculative=True)
    with pytest.raises(NotImplementedError, match="return_dict_in_generate"):
        model.generate(prompt, max_new_tokens=4, return_dict_in_generate=True, rosa_speculative=True)
    with pytest.raises(NotImplementedError, match="assistant"):
        model.generate(prompt, max_new_tokens=4, assistant_model=model)
    with pytest.raises(ValueError, match="disagree"):
        model.generate(prompt, max_new_tokens=4, prompt_lookup_num_tokens=3, rosa_speculative=5)
    with pytest.raises(ValueError, match="num_draft"):
        SpeculativeConfig.coerce({"num_draft": 0})
    with pytest.raises(ValueError, match="unknown keys"):
        SpeculativeConfig.coerce({"draft": 3})
    with pytest.raises(TypeError):
        SpeculativeConfig.coerce("yes")
    assert SpeculativeConfig.coerce({"enabled": False, "num_draft": 3}) is None
    assert SpeculativeConfig.coerce(3) == SpeculativeConfig(num_draft=3, min_match=2)


def test_drafter_continues_the_latest_longest_match():
    d = SuffixDrafter(num_draft=5, min_match=2)
    seq = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 7, 1, 2, 3]
    d.feed(seq)
    # longest repeated suffix "1 2 3", latest earlier end at index 8: followed by 7 7 1 2 3
    assert d.propose(seq, seq[-1:], 5) == [7, 7, 1, 2, 3]
    assert d.propose(seq, seq[-1:], 2) == [7, 7]
    periodic = [4, 5, 4, 5, 4]
    d = SuffixDrafter(num_draft=6, min_match=1)
    d.feed(periodic)
    assert d.propose(periodic, periodic[-1:], 6) == [5, 4, 5, 4, 5, 4]
    d = SuffixDrafter(num_draft=4, min_match=4)
    d.feed(seq)
    assert d.propose(seq, seq[-1:], 4) == []  # the match "1 2 3" is shorter than min_match
