"""generation.loading: a model for inference from a run directory, a merged model, a backbone + adapter
(refused when the backbone was trained too), model.init_from, or the model group alone."""
import logging

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import AutoModelForCausalLM

from rosa_lightning.generation.cli import CONFIG_DIR
from rosa_lightning.generation.loading import load_inference_model
from rosa_lightning.modeling import (RosaConfig, RosaQwen3ForCausalLM, build_rosa_model, rosa_named_parameters,
                                     save_adapter)

from .helpers import activate_branches, tiny_config
from .test_generate_cli import VOCAB, _tokenizer


def _cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="generate", overrides=["prompt=x", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A plain 'pretrained' backbone dir and a ROSA model on it with trained-looking weights everywhere."""
    from transformers import Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("loading")
    torch.manual_seed(0)
    Qwen3ForCausalLM(tiny_config(vocab_size=VOCAB)).save_pretrained(root / "backbone")
    _tokenizer().save_pretrained(root / "backbone")
    model = build_rosa_model(str(root / "backbone"), RosaConfig(window=8, global_layers=1, bits=8)).eval()
    activate_branches(model, seed=3)  # changes backbone matrices too, as stage B would
    return root, model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _same(a, b):
    ids = torch.arange(1, 30).unsqueeze(0)
    torch.testing.assert_close(_logits(a, ids), _logits(b, ids))


def test_run_dir_with_merged_model_and_auto_class(trained, tmp_path):
    root, model = trained
    model.save_pretrained(tmp_path / "run" / "model")
    _tokenizer().save_pretrained(tmp_path / "run" / "model")
    loaded, tok, source = load_inference_model(_cfg(f"run_dir={tmp_path / 'run'}"))
    assert source.kind == "merged" and loaded.rosa_config.bits == 8 and tok.padding_side == "left"
    _same(loaded, model)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").eval()
    assert type(auto) is RosaQwen3ForCausalLM and auto.config.model_type == "rosa_qwen3"
    _same(auto, model)
    # model.backbone pointing at a merged model uses its saved layout, not model.rosa
    again, _, source = load_inference_model(_cfg(f"model.backbone={tmp_path / 'run' / 'model'}"))
    assert source.kind == "merged" and again.rosa_config.bits == 8


def test_run_dir_with_only_a_checkpoint(trained, tmp_path):
    root, model = trained
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               run / "checkpoints" / "last.ckpt")
    rosa = {**RosaConfig(window=8, global_layers=1, bits=8).to_dict(), "_target_": "rosa_lightning.modeling.RosaConfig"}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"backbone": str(root / "backbone"),
                                                                           "rosa": rosa}}))
    loaded, _, source = load_inference_model(_cfg(f"run_dir={run}"))
    assert source.kind == "checkpoint" and source.tokenizer_ref == str(root / "backbone")
    _same(loaded, model)


def test_run_dir_without_model_names_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="model/config.json.*last.ckpt"):
        load_inference_model(_cfg(f"run_dir={tmp_path}"))
    with pytest.raises(ValueError, match="do not combine"):
        load_inference_model(_cfg(f"run_dir={tmp_path}", f"adapter={tmp_path}/a.safetensors"))


def test_adapter_of_a_trained_backbone_is_refused(trained, tmp_path):
    root, model = trained
    save_adapter(model, tmp_path / "b", backbone_trained=True)
    with pytest.raises(ValueError, match="trained together with its backbone.*run_dir"):
        load_inference_model(_cfg(f"model.backbone={root / 'backbone'}", f"adapter={tmp_path / 'b'}"))
    save_adapter(model, tmp_path / "a", backbone_trained=False)
    loaded, _, source = load_inference_model(_cfg(f"model.backbone={root / 'backbone'}", f"adapter={tmp_path / 'a'}"))
    assert source.kind == "adapter" and loaded.rosa_config.bits == 8
    for (n, p), (_, q) in zip(rosa_named_parameters(loaded), rosa_named_parameters(model)):
        assert torch.equal(p, q), n


def test_init_from_is_used(trained, tmp_path):
    root, model = trained
    save_adapter(model, tmp_path / "a", backbone_trained=False)
    loaded, _, source = load_inference_model(_cfg(f"model.backbone={root / 'backbone'}", "model.rosa.bits=8",
                                                  "model.rosa.window=8", "model.rosa.global_layers=1", f"model.init_from={tmp_path / 'a'}"))
    assert source.kind == "init_from"
    for (n, p), (_, q) in zip(rosa_named_parameters(loaded), rosa_named_parameters(model)):
        assert torch.equal(p, q), n


def test_plain_backbone_warns_that_branches_are_fresh_and_reports_no_missing_keys(trained, caplog):
    root, _ = trained
    with caplog.at_level(logging.INFO):
        model, _, source = load_inference_model(_cfg(f"model.backbone={root / 'backbone'}", "model.rosa.window=8"))
    assert source.kind == "backbone"
    text = caplog.text
    assert "freshly initialised" in text and "MISSING" not in text and "missing" not in text.lower().replace(
        "freshly", "")


def test_model_without_tokenizer_asks_for_one(tmp_path):
    model = build_rosa_model(tiny_config(vocab_size=VOCAB), RosaConfig(window=8))
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="without a tokenizer.*tokenizer="):
        load_inference_model(_cfg(f"run_dir={tmp_path}"))


def test_backbone_dir_without_tokenizer_files_is_named(trained, tmp_path):
    from transformers import Qwen3ForCausalLM

    Qwen3ForCausalLM(tiny_config(vocab_size=VOCAB)).save_pretrained(tmp_path / "weights_only")
    with pytest.raises(ValueError, match="weights_only' holds no tokenizer files"):
        load_inference_model(_cfg(f"model.backbone={tmp_path / 'weights_only'}"))


def test_load_run_from_python(trained, tmp_path):
    from rosa_lightning.generation.loading import load_run

    root, model = trained
    model.save_pretrained(tmp_path / "model")
    loaded, tok = load_run(str(tmp_path), device="cpu", tokenizer=str(root / "backbone"))
    _same(loaded, model)
    assert tok.padding_side == "left"
