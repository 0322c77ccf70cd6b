"""Published-checkpoint converter (docs/method.md §2.6): key mapping, alpha dropped, adapter round trip."""
import pytest
import torch
from safetensors.torch import save_file

from rosa_lightning.modeling import (RosaConfig, build_rosa_model, convert_published_state_dict, load_adapter,
                                     rosa_named_parameters)
from rosa_lightning.modeling.convert import _main


def _published_layer(i: int, c: int, gen: torch.Generator) -> dict:
    p = f"model.layers.{i}."
    sd = {p + f"rosa_{n}.weight": torch.randn(c, c, generator=gen) for n in ("q_proj", "k_proj", "v_proj", "out")}
    sd.update({p + "rosa_e0": torch.randn(c, generator=gen), p + "rosa_e1": torch.randn(c, generator=gen),
               p + "rosa_alpha": torch.randn(c, generator=gen)})
    return sd


def test_keys_are_renamed_and_alpha_dropped():
    gen = torch.Generator().manual_seed(0)
    sd = {"model.embed_tokens.weight": torch.zeros(3, 4), **_published_layer(1, 4, gen)}
    out = convert_published_state_dict(sd)
    assert sorted(out) == sorted(["model.embed_tokens.weight"] + [
        f"model.layers.1.rosa.{n}" for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight",
                                             "e0", "e1")])
    assert out["model.layers.1.rosa.out_proj.weight"] is sd["model.layers.1.rosa_out.weight"]
    assert out["model.layers.1.rosa.e1"] is sd["model.layers.1.rosa_e1"]


@pytest.mark.parametrize("bad", ["model.layers.2.rosa_e0.weight", "model.layers.2.rosa_q_proj",
                                 "model.layers.2.rosa_gate.weight"])
def test_malformed_published_keys_raise(bad):
    with pytest.raises(ValueError, match="rosa"):
        convert_published_state_dict({bad: torch.zeros(2)})


def test_converted_checkpoint_loads_as_adapter(tmp_path, capsys):
    cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
               num_key_value_heads=1, head_dim=16, max_position_embeddings=128)
    model = build_rosa_model(cfg, RosaConfig(bits=4, window=16))
    gen = torch.Generator().manual_seed(1)
    published = {}
    for i in (1, 2):
        published.update(_published_layer(i, 32, gen))
    src = tmp_path / "published.safetensors"
    save_file(published, str(src))
    _main([str(src), str(tmp_path / "adapter.safetensors"), "--bits", "4", "--window", "16"])
    assert "wrote 12 ROSA tensors" in capsys.readouterr().out
    saved_cfg = load_adapter(model, tmp_path / "adapter.safetensors")
    assert saved_cfg.bits == 4 and saved_cfg.window == 16
    params = dict(rosa_named_parameters(model))
    torch.testing.assert_close(params["model.layers.2.rosa.out_proj.weight"], published["model.layers.2.rosa_out.weight"])
    torch.testing.assert_close(params["model.layers.1.rosa.e0"], published["model.layers.1.rosa_e0"])
