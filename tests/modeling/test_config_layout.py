"""RosaConfig: nested by concern, validated once; files written with the older flat layout still load."""
import pytest

from conftest import tiny_config
from rosa_lightning.modeling import GradOptions, InputOptions, RosaConfig, RosaQwen3ForCausalLM, RuntimeOptions
from rosa_lightning.modeling.auto import as_rosa_config

FLAT = {"bits": 8, "rosa_layers": None, "global_layers": 1, "window": 16, "injection": "post_attn",
        "token_channel": "off", "num_threads": 1, "cf_field": "hard", "grad_mode": "published", "relax_beta": 2.0,
        "k_credit": "matched", "cf_e0_term": True, "kv_shift": True, "qk_tied": True, "center_u": "off",
        "enabled": True}


def test_the_older_flat_layout_reads_as_the_nested_one():
    cfg = RosaConfig.from_dict(FLAT)
    assert cfg == RosaConfig(bits=8, window=16, inputs=InputOptions(kv_shift=True, qk_tied=True),
                             grad=GradOptions(field="hard", k_credit="matched", e0_term=True, relax_beta=2.0),
                             runtime=RuntimeOptions(num_threads=1))
    assert RosaConfig.from_dict(cfg.to_dict()) == cfg  # the nested layout round-trips
    assert cfg.flat()["inputs.kv_shift"] is True and cfg.flat()["grad.field"] == "hard"


def test_bad_layouts_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="inputs.kv_shift is given both"):
        RosaConfig.from_dict({"kv_shift": True, "inputs": {"kv_shift": False}})
    with pytest.raises(ValueError, match="unknown RosaConfig keys"):
        RosaConfig.from_dict({"kv_shfit": True})
    with pytest.raises(ValueError, match="unknown RosaConfig.grad keys"):
        RosaConfig(grad={"cf_field": "hard"})
    with pytest.raises(ValueError, match="RosaConfig.inputs must be"):
        RosaConfig(inputs=3)


def test_enabled_switches_every_layer_through_the_one_shared_object():
    config = as_rosa_config(tiny_config(layers=3))
    config.rosa = dict(FLAT, window=None)  # a config.json written with the flat layout
    model = RosaQwen3ForCausalLM(config)
    assert model.config.rosa == model.rosa_config.to_dict()  # stored nested from now on
    layers = [layer for layer in model.model.layers if hasattr(layer, "rosa")]
    assert layers and all(layer.rosa_config is model.rosa_config for layer in layers)
    model.rosa_config.enabled = False
    assert all(not layer.rosa_config.enabled for layer in layers) and model.rosa_config.runtime.enabled is False
    assert all(layer.rosa.grad_options == model.rosa_config.grad for layer in layers)
