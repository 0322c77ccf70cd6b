"""Training through the real composition: fast_dev_run, the published recipe on a tiny local backbone,
loggers finished after a failure, the in-run stage switch, and a Hydra multirun."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rosa_lightning.cli import train


def test_fast_dev_run_default_experiment(make_cfg, tmp_path):
    import wandb

    metrics, objects = train(make_cfg("trainer.fast_dev_run=true"))  # default logger: W&B offline
    assert math.isfinite(metrics["train/loss"]) and "val/answer_acc" in metrics
    for key in ("time/data_wait_s", "time/step_s", "rosa/retrieval_cpu_s", "rosa/wait_s", "rosa/overlap_fraction",
                "train/tokens_seen", "train/ppl", "lr/rosa", "lr/backbone"):
        assert key in metrics, key
    assert metrics["rosa/retrieval_cpu_s"] > 0
    assert wandb.run is None  # the logger was finished
    assert (tmp_path / "adapter" / "rosa_adapter.safetensors").exists()


def test_longbench_fast_dev_run_on_tiny_local_backbone(make_cfg, tiny_backbone_dir, text_corpus):
    cfg = make_cfg("experiment=longbench", "trainer.fast_dev_run=true", f"model.backbone={tiny_backbone_dir}",
                   f"data.source.path={text_corpus}", "data.seq_len=64", "model.rosa.window=32", "data.num_workers=0",
                   "logger=csv")  # the recipe's 2048-token window would not be shorter than these 64-token rows
    metrics, objects = train(cfg)
    assert math.isfinite(metrics["train/loss"])
    model = objects["model"]
    assert model.stage == "A" and not any(p.requires_grad for n, p in model.model.named_parameters()
                                          if ".rosa." not in n)


def test_failing_job_still_finishes_wandb(make_cfg):
    import wandb

    cfg = make_cfg("trainer.fast_dev_run=true", "data.seq_len=100", "data.source.task.seq_len=128")
    with pytest.raises(ValueError, match="seq_len"):
        train(cfg)
    assert wandb.run is None


def test_exception_in_training_closes_executor_and_logger(make_cfg):
    import threading

    import wandb

    cfg = make_cfg("trainer.max_steps=5", "+callbacks.fail._target_=tests.framework.conftest.FailAtStep")
    with pytest.raises(RuntimeError, match="planned failure"):
        train(cfg)
    assert wandb.run is None
    assert not [t for t in threading.enumerate() if t.name.startswith("rosa-retrieval")]


def test_stage_b_starts_after_token_budget(make_cfg):
    # 128-token rows, batch 16: 2048 tokens per step; the switch happens after step 2
    cfg = make_cfg("train.stage=A", "train.stage_a_tokens=4096", "trainer.max_steps=4", "logger=csv",
                   "callbacks=none", "trainer.limit_val_batches=0")
    metrics, objects = train(cfg)
    module = objects["model"]
    assert module.stage == "B" and module.stage_started_step == 2
    names = {g["name"] for g in objects["trainer"].optimizers[0].param_groups}
    assert names == {"rosa", "rosa_no_decay", "backbone", "backbone_no_decay"}
    assert metrics["train/stage_b"] == 1.0


def test_multirun_sweep(tmp_path):
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "train.py"), "-m", "model.rosa.bits=2,4", "trainer.fast_dev_run=true",
           "logger=csv", "callbacks=none", "trainer.enable_progress_bar=false"]
    # no hydra.sweep.dir override: the default sweep folder must resolve by itself
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "mqar_recall" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def test_stage_b_run_starts_from_stage_a_checkpoint_or_adapter(tmp_path_factory):
    import hydra
    import torch

    from rosa_lightning.modeling import unused_parameters
    from tests.framework.conftest import compose_cfg

    short = ["logger=csv", "trainer.max_steps=2", "trainer.limit_val_batches=0",
             "callbacks.model_checkpoint.every_n_train_steps=2"]
    a_dir, b_dir, c_dir = (tmp_path_factory.mktemp(n) for n in ("stage_a", "stage_b", "from_adapter"))
    _, a = train(compose_cfg(a_dir, short + ["train.stage=A"]))
    trained = {n: p.detach().clone() for n, p in a["model"].model.named_parameters() if ".rosa." in n}
    for start, out in ((a_dir / "checkpoints" / "last.ckpt", b_dir), (a_dir / "adapter", c_dir)):
        cfg = compose_cfg(out, short + ["train.stage=B", f"model.init_from={start}"])
        module = hydra.utils.instantiate(cfg.model)
        params = dict(module.model.named_parameters())
        unused = {n for n, _ in unused_parameters(module.model)}  # k_proj under qk_tied: never read
        assert module.stage == "B" and all(p.requires_grad == (n not in unused) for n, p in params.items())
        assert all(torch.equal(params[n], t) for n, t in trained.items())


def test_hash_teacher_warm_start_then_auxiliary_then_off(make_cfg):
    # steps 0-1: teacher loss alone; steps 2-3: LM + 5 x teacher; from step 4 the teacher is closed
    cfg = make_cfg("trainer.max_steps=5", "logger=csv", "callbacks=none", "trainer.limit_val_batches=0",
                   "model.hash_teacher={weight: 5.0, warm_start_steps: 2, until_step: 4, seed: 1}")
    seen = []
    from rosa_lightning.lit_module import RosaLitModule

    original = RosaLitModule._with_teacher

    def spy(self, loss, input_ids):
        out = original(self, loss, input_ids)
        seen.append((self.global_step, float(loss.detach()), float(out.detach()), self.teacher is None))
        return out

    RosaLitModule._with_teacher = spy
    try:
        metrics, objects = train(cfg)
    finally:
        RosaLitModule._with_teacher = original
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4]
    assert all(out != lm for _, lm, out, _ in seen[:4]) and all(out > lm for _, lm, out, _ in seen[2:4])
    assert seen[4][2] == seen[4][1] and seen[4][3] and objects["model"].teacher is None
    assert "train/teacher_loss" in metrics


def test_hash_teacher_settings_are_validated():
    from rosa_lightning.lit_module import teacher_config

    assert teacher_config(None) is None and teacher_config({"weight": 0}) is None
    assert teacher_config({"warm_start_steps": 3}) == {"weight": 0.0, "warm_start_steps": 3, "until_step": None,
                                                       "seed": 0}
    for bad, match in (({"wieght": 1.0}, "unknown"), ({"weight": -1}, "weight"), ({"warm_start_steps": 1.5}, "warm"),
                       ({"weight": 1, "until_step": -2}, "until_step")):
        with pytest.raises(ValueError, match=match):
            teacher_config(bad)
