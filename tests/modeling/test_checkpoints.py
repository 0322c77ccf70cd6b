"""Loading a global checkpoint into the windowed ROSA model, merged save/reload, adapters, offline errors."""
import copy
import time

import pytest
import torch
from transformers import Qwen3ForCausalLM

from conftest import randomize_values
from rosa_lightning.modeling import (RosaConfig, RosaQwen3ForCausalLM, apply_rosa, apply_window, build_rosa_model,
                                     load_adapter, read_adapter_config, rosa_named_parameters, save_adapter,
                                     windowed_config)


@pytest.fixture
def global_checkpoint(cfg, tmp_path):
    torch.manual_seed(0)
    plain = Qwen3ForCausalLM(cfg)
    path = tmp_path / "global"
    plain.save_pretrained(path)
    return plain.eval(), path


def test_windowed_conversion_of_global_checkpoint(global_checkpoint, ids):
    plain, path = global_checkpoint
    model = build_rosa_model(str(path), RosaConfig(window=8)).eval()
    assert isinstance(model, RosaQwen3ForCausalLM)
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    for name, p in plain.state_dict().items():
        assert torch.equal(model.state_dict()[name], p), name
    branch = model.model.layers[1].rosa
    assert torch.equal(branch.out_proj.weight, torch.eye(64)) and not branch.e0.any()
    assert 0 < branch.q_proj.weight.abs().max() <= (6 / 128) ** 0.5 + 1e-6
    # Same logits as HF's own windowed Qwen3 with the same weights; different from the global model.
    windowed = Qwen3ForCausalLM.from_pretrained(path, config=windowed_config(plain.config, 8, 1)).eval()
    with torch.no_grad():
        got = model(ids).logits
        assert torch.equal(got, windowed(ids).logits)
        assert not torch.allclose(got, plain(ids).logits)


def test_apply_window_in_place_matches_config_route(global_checkpoint, ids):
    plain, path = global_checkpoint
    converted = apply_window(copy.deepcopy(plain), 8, 1)
    windowed = Qwen3ForCausalLM.from_pretrained(path, config=windowed_config(plain.config, 8, 1)).eval()
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, windowed(ids).logits)


def test_checkpoint_with_wrong_keys_is_rejected(cfg, tmp_path):
    torch.manual_seed(0)
    other = Qwen3ForCausalLM(cfg.__class__(**{**cfg.to_dict(), "hidden_size": 64, "intermediate_size": 64}))
    sd = other.state_dict()
    sd["model.extra.weight"] = torch.zeros(2)
    path = tmp_path / "odd"
    other.save_pretrained(path, state_dict=sd)
    with pytest.raises(Exception):
        build_rosa_model(str(path), RosaConfig(window=8))


def test_merged_save_pretrained_reloads_same_class(cfg, ids, tmp_path):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16, token_channel="shared", bits=2)).eval()
    randomize_values(model)
    with torch.no_grad():
        model.rosa_token.proj.weight.normal_()
        want = model(ids).logits
    model.save_pretrained(tmp_path / "merged")
    again = RosaQwen3ForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert again.rosa_config == model.rosa_config
    for n, p in model.state_dict().items():
        assert torch.equal(again.state_dict()[n], p), n
    with torch.no_grad():
        assert torch.equal(again(ids).logits, want)


def test_adapter_round_trip(cfg, ids, tmp_path):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16))
    randomize_values(model)
    file = save_adapter(model, tmp_path / "adapter")
    assert file.name == "rosa_adapter.safetensors" and not list(file.parent.glob(".rosa_adapter.*"))
    torch.manual_seed(1)
    fresh = build_rosa_model(cfg, RosaConfig(window=16))
    fresh.load_state_dict({n: p for n, p in model.state_dict().items() if "rosa" not in n}, strict=False)
    assert read_adapter_config(file) == model.rosa_config
    assert load_adapter(fresh, tmp_path / "adapter") == model.rosa_config
    for (n, a), (_, b) in zip(rosa_named_parameters(model), rosa_named_parameters(fresh)):
        assert torch.equal(a, b), n
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)
    wrong = build_rosa_model(cfg, RosaConfig(window=16, rosa_layers=[0, 1]))
    with pytest.raises(ValueError, match="missing"):
        load_adapter(wrong, file)


def test_apply_rosa_to_plain_model_and_deepcopy(cfg, ids):
    torch.manual_seed(0)
    plain = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        want = plain(ids).logits
    model = apply_rosa(plain, RosaConfig(window=None))
    assert isinstance(model, RosaQwen3ForCausalLM) and model.config.rosa["bits"] == 4
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want)
    model(ids)  # starts the model's own pipeline: a copy gets a stopped one of its own
    clone = copy.deepcopy(model)
    assert clone.rosa_config is clone.model.layers[1].rosa_config is not model.rosa_config
    assert clone.model.retrieval_pipeline is not model.model.retrieval_pipeline
    assert clone.model.retrieval_pipeline is not None and not clone.model.retrieval_pipeline.running
    with torch.no_grad():
        assert torch.equal(clone(ids).logits, want)


def test_offline_errors_are_fast_and_helpful(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="local directory"):
        build_rosa_model("Qwen/Qwen3-NotCachedAnywhere-0B", RosaConfig())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_rosa_model(str(tmp_path / "missing"), RosaConfig())
    assert time.perf_counter() - t0 < 10
