"""A NaN/inf loss or gradient stops training with the step and the value (default) or skips the step
(model.nonfinite=skip), and no checkpoint, adapter or merged model with NaN/inf weights is ever written."""
import math

import pytest
import torch

from rosa_lightning.callbacks.checkpoint_io import AtomicCheckpointIO
from rosa_lightning.cli import train
from rosa_lightning.modeling.integrity import NonFiniteError

SHORT = ["logger=csv", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "data.batch_size=4",
         "data.source.num_train=64", "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=1"]


class Poison:
    """At training step ``step``: NaN into a weight before the batch ("weight") or into a gradient ("grad")."""

    def __new__(cls, step: int = 2, where: str = "grad"):
        import lightning as L

        class _Poison(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if where == "weight" and trainer.global_step == step:
                    with torch.no_grad():
                        pl_module.model.model.norm.weight.fill_(float("nan"))

            def on_after_backward(self, trainer, pl_module):
                if where == "grad" and trainer.global_step == step:
                    pl_module.model.model.norm.weight.grad[0] = float("inf")

        return _Poison()


def _poison(where):
    return ["+callbacks.poison._target_=tests.framework.test_nonfinite.Poison", f"+callbacks.poison.where={where}"]


def _all_finite(ckpt):
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_nan_loss_stops_training_naming_step_and_value(make_cfg, tmp_path):
    with pytest.raises(FloatingPointError, match=r"the training loss is nan at step 2; training stops"):
        train(make_cfg(*SHORT, "trainer.max_steps=4", *_poison("weight")))
    ckpts = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts and all(_all_finite(c) for c in ckpts)  # steps 1 and 2 were written, finite
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "model").exists()


def test_inf_gradient_stops_training_naming_the_parameter(make_cfg):
    with pytest.raises(FloatingPointError, match=r"gradient of model.norm.weight holds NaN or inf at step 2"):
        train(make_cfg(*SHORT, "trainer.max_steps=4", *_poison("grad")))


def test_skip_mode_skips_and_counts_the_step(make_cfg, tmp_path):
    seen = {}

    class Spy:
        def __new__(cls):
            import lightning as L

            class _Spy(L.Callback):
                def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                    seen[trainer.global_step] = pl_module.model.lm_head.weight.detach().clone()

            return _Spy()

    import tests.framework.test_nonfinite as me

    me.Spy = Spy
    metrics, objects = train(make_cfg(*SHORT, "trainer.max_steps=4", "model.nonfinite=skip", *_poison("grad"),
                                      "+callbacks.spy._target_=tests.framework.test_nonfinite.Spy"))
    assert objects["model"].nonfinite_skipped == 1 and metrics["train/nonfinite_skipped"] == 1.0
    assert torch.equal(seen[2], seen[3]) and not torch.equal(seen[1], seen[2])  # step 2 changed nothing
    assert math.isfinite(metrics["train/loss"]) and _all_finite(tmp_path / "checkpoints" / "last.ckpt")


def test_nonfinite_mode_is_validated(make_cfg):
    import hydra

    with pytest.raises(Exception, match="model.nonfinite must be one of"):  # hydra wraps the ValueError
        hydra.utils.instantiate(make_cfg("model.nonfinite=ignore").model)


def test_non_finite_checkpoint_is_refused_and_the_previous_one_kept(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "optimizer_states": []}, path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint .*last.ckpt: 1 tensor\(s\) .*state_dict.w"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "optimizer_states": []}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_non_finite_merged_model_is_refused_and_the_previous_one_kept(tmp_path):
    from transformers import Qwen3Config

    from rosa_lightning.callbacks.adapter import save_merged_model
    from rosa_lightning.modeling import RosaConfig, build_rosa_model

    model = build_rosa_model(Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=8),
                             RosaConfig(window=8, bits=4))
    save_merged_model(model, str(tmp_path / "model"))
    before = sorted(p.name for p in (tmp_path / "model").iterdir())
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    with pytest.raises(NonFiniteError, match="model.norm.weight"):
        save_merged_model(model, str(tmp_path / "model"))
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == before and "config.json" in before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
