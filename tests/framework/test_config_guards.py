"""Configurations that cannot train what they describe fail before the first step, with the keys to change:
no ROSA layer, a window no row is longer than, a kernel thread count OpenMP cannot start; data=hf_text works
from the default experiment; ids outside the vocabulary are named."""
import pytest
import torch

from rosa_lightning.cli import train

SHORT = ["logger=csv", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "data.batch_size=4",
         "data.source.num_train=64", "trainer.max_steps=2"]


def _model(make_cfg, *overrides):
    import hydra

    return hydra.utils.instantiate(make_cfg(*overrides).model)


@pytest.mark.parametrize("overrides", [["model.rosa.global_layers=2"], ["model.rosa.rosa_layers=[]"]])
def test_no_rosa_layer_is_refused(make_cfg, overrides):
    with pytest.raises(Exception, match=r"model.rosa gives no ROSA layer .* the token channel is off"):
        _model(make_cfg, *overrides)


def test_token_channel_alone_and_disabled_rosa_are_allowed(make_cfg):
    assert _model(make_cfg, "model.rosa.rosa_layers=[]", "model.rosa.token_channel=shared") is not None
    assert _model(make_cfg, "model.rosa.global_layers=2", "model.rosa.runtime.enabled=false") is not None


def test_bits_true_is_refused(make_cfg):
    with pytest.raises(Exception, match=r"RosaConfig.bits must be an int in 1..8 .* got True"):
        _model(make_cfg, "model.rosa.bits=true")


def test_window_not_shorter_than_the_rows_fails_before_training(make_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"model.rosa.window=128 is not shorter than the 128-token rows"):
        train(make_cfg(*SHORT, "model.rosa.window=128"))
    assert not (tmp_path / "checkpoints").exists()
    metrics, _ = train(make_cfg(*SHORT, "model.rosa.window=127"))  # one token short of the row: meaningful
    assert "train/loss" in metrics


def test_kernel_threads_beyond_the_machine_fail_before_training(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="num_threads=100000 is more than this machine allows"):
        train(make_cfg(*SHORT, "model.rosa.runtime.num_threads=100000"))
    assert not (tmp_path / "checkpoints").exists()


def test_hf_text_from_the_default_experiment_gets_no_synthetic_keys(make_cfg, tiny_backbone_dir, text_corpus):
    import hydra

    cfg = make_cfg("data=hf_text", f"model.backbone={tiny_backbone_dir}", f"data.source.path={text_corpus}",
                   "data.seq_len=64", "data.num_workers=0")
    assert "num_train" not in cfg.data.source
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    assert dm.row_tokens() == 64
    assert make_cfg().data.source.num_train == 16384  # the default experiment's length is unchanged


def test_ids_beyond_the_vocabulary_are_named_before_the_embedding(make_cfg):
    import hydra

    module = hydra.utils.instantiate(make_cfg().model)
    vocab = module.model.config.vocab_size
    ids = torch.zeros(2, 16, dtype=torch.long)
    ids[1, 7] = vocab + 3
    with pytest.raises(ValueError, match=rf"input id {vocab + 3} \(batch row 1, position 7\) is outside the "
                                         rf"model's vocabulary \[0, {vocab}\)"):
        module._step({"input_ids": ids, "labels": ids}, "train")


