"""ROSA-patched Qwen3: step-0 identity, window reach, gradients, freezing, token channel, rosa_cache seam."""
import pytest
import torch
from transformers import Qwen3ForCausalLM

from conftest import randomize_values, tiny_config
from rosa_lightning.modeling import (RosaConfig, RosaQwen3DecoderLayer, build_rosa_model, freeze_backbone,
                                     is_rosa_parameter, rosa_layers, rosa_named_parameters, rosa_timing_stats)
from rosa_lightning.retrieval.seam import LayerRetrieval


def _plain_twin(model):
    """An unpatched HF Qwen3ForCausalLM with the same config (window included) and weights."""
    plain = Qwen3ForCausalLM(model.config)
    sd = {k: v for k, v in model.state_dict().items() if not is_rosa_parameter(k)}
    plain.load_state_dict(sd, strict=True)
    return plain.eval()


@pytest.mark.parametrize("rosa", [RosaConfig(window=16), RosaConfig(window=16, runtime=dict(enabled=False)),
                                  RosaConfig(window=None, injection="pre_attn"),
                                  RosaConfig(window=16, token_channel="shared", rosa_layers=[0, 1]),
                                  RosaConfig(window=16, token_channel="own", bits=2)])
def test_step_zero_identity(cfg, ids, rosa):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, rosa).eval()
    assert len(rosa_layers(model)) == len(rosa.layers_for(2))
    with torch.no_grad():
        got = model(ids, rosa_token_ids=ids.roll(1, 1)).logits
        want = _plain_twin(model)(ids).logits
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_default_placement_and_keys(cfg):
    model = build_rosa_model(cfg, RosaConfig())
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    assert model.config.sliding_window == 2048 and model.config.use_sliding_window
    assert not isinstance(model.model.layers[0], RosaQwen3DecoderLayer)
    names = {n for n, _ in rosa_named_parameters(model)}
    assert names == {f"model.layers.1.rosa.{k}" for k in
                     ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "e0", "e1")}
    branch = model.model.layers[1].rosa
    assert torch.equal(branch.out_proj.weight, torch.eye(64)) and not branch.e0.any() and not branch.e1.any()
    assert branch.q_proj.weight.abs().max() <= (6 / 128) ** 0.5 + 1e-6  # Xavier-uniform bound


def _window_outputs(model, ids, prefix: int):
    changed = ids.clone()
    changed[:, :prefix] = (changed[:, :prefix] + 1) % 97
    with torch.no_grad():
        return model(ids).logits, model(changed).logits


def test_window_reach_single_layer():
    W, prefix = 8, 10
    ids = torch.arange(48).remainder(13).unsqueeze(0).repeat(2, 1)  # periodic: ROSA finds long matches
    ids[1] = torch.randint(0, 97, (48,), generator=torch.Generator().manual_seed(1))
    cfg = tiny_config(layers=1)
    torch.manual_seed(0)
    window_only = build_rosa_model(cfg, RosaConfig(window=W, global_layers=0, runtime=dict(enabled=False))).eval()
    a, b = _window_outputs(window_only, ids, prefix)
    reach = prefix + W - 1  # t - W >= prefix - 1: every changed token is out of the window
    assert torch.equal(a[:, reach:], b[:, reach:])
    assert not torch.equal(a[:, :reach], b[:, :reach])

    torch.manual_seed(0)
    with_rosa = build_rosa_model(cfg, RosaConfig(window=W, global_layers=0, rosa_layers=[0])).eval()
    randomize_values(with_rosa, scale=3.0)
    a, b = _window_outputs(with_rosa, ids, prefix)
    assert not torch.allclose(a[:, reach:], b[:, reach:])
    # Zero e0/e1 again: the branch is silent and the window bound holds exactly.
    with torch.no_grad():
        for layer in rosa_layers(with_rosa):
            layer.rosa.e0.zero_()
            layer.rosa.e1.zero_()
    a, b = _window_outputs(with_rosa, ids, prefix)
    assert torch.equal(a[:, reach:], b[:, reach:])


def test_gradients_at_init_and_after(cfg, ids):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16))
    model(ids, labels=ids).loss.backward()
    grads = {n.rsplit("rosa.", 1)[1]: p.grad for n, p in rosa_named_parameters(model)}
    assert grads["e0"].abs().sum() > 0 and grads["e1"].abs().sum() > 0
    for k in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"):
        assert not grads[k].any(), k  # proportional to e1 - e0 = 0, resp. y = 0 (docs/method.md §2.2)
    model.zero_grad(set_to_none=True)
    randomize_values(model)
    model(ids, labels=ids).loss.backward()
    for n, p in rosa_named_parameters(model):
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_stage_a_freezing(cfg, ids):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16, token_channel="shared"))
    randomize_values(model)
    trainable, frozen = freeze_backbone(model)
    assert trainable == sum(p.numel() for _, p in rosa_named_parameters(model)) == 4 * 64 * 64 + 2 * 64 + 64 * 64
    model(ids, labels=ids, rosa_token_ids=ids.roll(1, 1)).loss.backward()
    for n, p in model.named_parameters():
        if is_rosa_parameter(n):
            assert p.requires_grad and p.grad is not None, n
        else:
            assert not p.requires_grad and p.grad is None, n
    assert model.model.layers[1].rosa.q_proj.weight.grad.abs().sum() > 0


def test_token_channel_learns_and_computes_ids(cfg, ids):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16, token_channel="shared"))
    model(ids, labels=ids).loss.backward()  # ids computed on the fly with rosa_next_token
    assert model.rosa_token.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.rosa_token.proj.weight.normal_()
        none = torch.full_like(ids, -1)
        base = model(ids, rosa_token_ids=none).logits
        assert torch.equal(base, _plain_twin(model)(ids).logits)
        assert not torch.equal(model(ids).logits, base)


class _FixedCache:
    """A stand-in streaming retriever (the seam): answers every layer with the same tau and V symbols."""

    streaming = True

    def __init__(self, tau, v_at_tau):
        self.tau, self.v_at_tau, self.calls = tau, v_at_tau, []

    def end_forward(self):
        pass

    def submit(self, layer_idx, q_sym, k_sym, bits, want_cf, reuse=False):
        return _FixedJob(self, layer_idx, q_sym)


class _FixedJob:
    def __init__(self, cache, layer_idx, q_sym):
        self.cache, self.layer_idx, self.q_sym = cache, layer_idx, q_sym

    def result(self, v_sym):
        c = self.cache
        c.calls.append((self.layer_idx, tuple(self.q_sym.shape), self.q_sym.dtype, tuple(v_sym.shape)))
        return LayerRetrieval(tau=c.tau, v_at_tau=c.v_at_tau)


def test_rosa_cache_protocol(cfg, ids):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16)).eval()
    randomize_values(model)
    B, T, R = ids.shape[0], ids.shape[1], 16
    tau = torch.full((B, R, T), -1, dtype=torch.int32)
    cache = _FixedCache(tau, torch.zeros(B, R, T, dtype=torch.uint8))
    with torch.no_grad():
        silent = model(ids, rosa_cache=cache).logits
        assert torch.equal(silent, _plain_twin(model)(ids).logits)  # tau = -1 everywhere: exactly 0
        assert cache.calls == [(1, (B, T, R), torch.uint8, (B, T, R))]
        # Retrieve "all ones" at time 0 for every position: y = e1 on every channel.
        cache.tau = torch.zeros_like(tau)
        cache.v_at_tau = torch.full((B, R, T), 15, dtype=torch.uint8)
        branch = model.model.layers[1].rosa
        u = torch.randn(B, T, 64)
        inj = branch(u, 1, cache)
        torch.testing.assert_close(inj, branch.e1.expand(B, T, 64) @ branch.out_proj.weight.t())


def test_timing_stats(cfg, ids):
    model = build_rosa_model(cfg, RosaConfig(window=16))
    model(ids)
    model(ids)
    stats = rosa_timing_stats(model)
    assert stats["calls"] == 2 and stats["retrieval_cpu_s"] > 0 and 0 <= stats["overlap_fraction"] <= 1
    assert rosa_timing_stats(model)["calls"] == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=9), "bits"), (dict(injection="mid"), "injection"), (dict(token_channel="on"), "token_channel"),
    (dict(window=0), "window"), (dict(runtime=dict(num_threads=0)), "num_threads"), (dict(grad=dict(field="x")), "field"),
    (dict(rosa_layers=[1, 1]), "duplicates"), (dict(global_layers=-1), "global_layers")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RosaConfig(**kwargs)


def test_bad_layer_index_and_bits(cfg):
    with pytest.raises(ValueError, match="out of range"):
        build_rosa_model(cfg, RosaConfig(rosa_layers=[5]))
    with pytest.raises(ValueError, match="divisible"):
        build_rosa_model(cfg, RosaConfig(bits=7))
