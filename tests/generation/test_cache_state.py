"""The ROSA cache itself: tau equals rosa_match on the full sequence, bookkeeping errors, state size."""
import pytest
import torch

from rosa_lightning.generation import RosaGenerationCache
from rosa_lightning.modeling import rosa_layers
from rosa_lightning.modeling.symbols import pack_symbols
from rosa_lightning.retrieval import rosa_match

from .helpers import VOCAB, incremental_logits, tiny_model


class RecordingCache(RosaGenerationCache):
    """Keeps every layer's symbols and tau, chunk by chunk."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = {}

    def retrieve(self, layer_idx, q_sym, k_sym, v_sym):
        tau, v_at_tau = super().retrieve(layer_idx, q_sym, k_sym, v_sym)
        self.record.setdefault(layer_idx, []).append((q_sym.clone(), k_sym.clone(), tau.clone()))
        return tau, v_at_tau


def _full_symbols(model, ids):
    """uint8 [B, T, R] Q and K symbols of every ROSA layer in the full-sequence forward."""
    syms, hooks = {}, []
    for layer in rosa_layers(model):
        def hook(mod, args, kwargs):
            u = mod.input_layernorm(args[0] if args else kwargs["hidden_states"])
            syms[mod.self_attn.layer_idx] = (pack_symbols(mod.rosa.q_proj(u), mod.rosa.bits),
                                             pack_symbols(mod.rosa.k_proj(u), mod.rosa.bits))
        hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return syms


@pytest.mark.parametrize("chunks", [[9] + [1] * 23, [1] * 32, [5, 12, 3, 12]])
def test_tau_equals_rosa_match_per_layer(chunks):
    model = tiny_model(rosa_layers_=[0, 1], global_layers=0)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 6, (2, 32), generator=g)  # small alphabet: long matches, runs of equal symbols
    rc = RecordingCache.for_model(model)
    assert isinstance(rc, RecordingCache)
    incremental_logits(model, ids, chunks, rosa_cache=rc)
    full = _full_symbols(model, ids)
    assert sorted(rc.record) == sorted(full) == [0, 1]
    for layer_idx, parts in rc.record.items():
        q = torch.cat([p[0] for p in parts], dim=1)
        k = torch.cat([p[1] for p in parts], dim=1)
        tau = torch.cat([p[2] for p in parts], dim=2)
        assert torch.equal(q, full[layer_idx][0]) and torch.equal(k, full[layer_idx][1])
        want = rosa_match(q, k, model.rosa_config.bits, want_cf=False).tau
        assert torch.equal(tau, want), f"layer {layer_idx}"
        assert (tau >= 0).float().mean() > 0.1  # retrieval actually happens


def test_begin_and_retrieve_bookkeeping():
    model = tiny_model()
    rc = RosaGenerationCache.for_model(model)
    assert rc.layers == [1] and rc.routes == 16 and rc.bits == 4 and not rc.token_channel
    q = torch.zeros((1, 3, 16), dtype=torch.uint8)
    with pytest.raises(ValueError, match="begin"):
        rc.retrieve(1, q, q, q)
    rc.begin(torch.ones((1, 3), dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        rc.retrieve(1, q[:, :2], q[:, :2], q[:, :2])
    rc.retrieve(1, q, q, q)
    with pytest.raises(RuntimeError, match="once"):
        rc.retrieve(1, q, q, q)  # a second retrieve of the same positions
    with pytest.raises(ValueError, match="no ROSA state"):
        rc.retrieve(0, q, q, q)
    with pytest.raises(ValueError, match="batch size"):
        rc.begin(torch.ones((2, 1), dtype=torch.long))
    with pytest.raises(ValueError, match="padding after the first chunk"):
        rc.begin(torch.ones((1, 1), dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1, 0]]))
    rc.reset()
    with pytest.raises(ValueError, match="only left padding"):
        rc.begin(torch.ones((1, 3), dtype=torch.long), attention_mask=torch.tensor([[1, 0, 1]]))


def test_left_padding_offsets_and_prefill_decision():
    """Prefill = the first begin after reset (from the cache's own length), whatever the chunk size."""
    model = tiny_model(token_channel="shared")
    rc = RosaGenerationCache.for_model(model)
    ids = torch.tensor([[0, 0, 5, 5, 5], [7, 5, 5, 7, 5]])
    tok = rc.begin(ids, attention_mask=torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    assert rc.start.tolist() == [2, 0] and rc.length == 5
    assert tok.tolist() == [[-1, -1, -1, 5, 5], [-1, -1, 5, 5, 5]]
    rc.reset()
    rc.begin(ids[:, :1])  # a one-token prompt is still a prefill
    assert rc.start.tolist() == [0, 0] and rc.length == 1


def test_state_size_reported():
    model = tiny_model(token_channel="shared")
    rc = RosaGenerationCache.for_model(model)
    ids = torch.randint(1, VOCAB, (2, 200), generator=torch.Generator().manual_seed(0))
    incremental_logits(model, ids, [150] + [1] * 50, rosa_cache=rc)
    size = rc.nbytes()
    assert size["automaton"] > 0 and size["token_channel"] > 0
    assert size["values"] >= 2 * 16 * 200  # one byte per (row, route, position), one ROSA layer
    assert size["total"] == size["automaton"] + size["values"] + size["token_channel"]
