"""Resuming from a mid-epoch checkpoint reproduces the losses of an uninterrupted run."""
import csv

import torch

from rosa_lightning.cli import train
from tests.framework.conftest import compose_cfg

COMMON = ["logger=csv", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0", "data.batch_size=8",
          "data.source.num_train=48", "data.seq_len=64", "data.source.task.num_pairs=4",
          "callbacks.model_checkpoint.every_n_train_steps=4", "trainer.max_epochs=2"]


def losses(out_dir):
    rows = list(csv.DictReader(open(out_dir / "csv" / "version_0" / "metrics.csv")))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def test_resume_reproduces_uninterrupted_losses(tmp_path_factory):
    full_dir, first_dir, resumed_dir = (tmp_path_factory.mktemp(n) for n in ("full", "first", "resumed"))
    train(compose_cfg(full_dir, COMMON + ["trainer.max_steps=10"]))
    train(compose_cfg(first_dir, COMMON + ["trainer.max_steps=5"]))
    ckpt = first_dir / "checkpoints" / "step0000004.ckpt"  # mid-epoch: 6 batches per epoch
    assert ckpt.exists()
    train(compose_cfg(resumed_dir, COMMON + ["trainer.max_steps=10", f"ckpt_path={ckpt}"]))
    full, resumed = losses(full_dir), losses(resumed_dir)
    assert sorted(resumed) == list(range(4, 10))  # steps 4..9 (0-based), across the epoch boundary
    for step in resumed:
        assert torch.isclose(torch.tensor(resumed[step]), torch.tensor(full[step]), rtol=1e-5, atol=1e-6), step


def test_resume_after_the_stage_switch_reproduces_uninterrupted_losses(tmp_path_factory):
    """Stage A for 2 steps (1024 tokens), then stage B with its schedule restarted over the remaining 10 steps; a
    run killed at step 6 and resumed from its step-4 checkpoint must rebuild that same schedule."""
    switch = COMMON + ["trainer.max_steps=12", "train.stage=A", "train.stage_a_tokens=1024",
                       "model.scheduler.warmup_steps=1"]
    fail = ["+callbacks.fail._target_=tests.framework.conftest.FailAtStep", "+callbacks.fail.step=6"]
    full_dir, first_dir, resumed_dir = (tmp_path_factory.mktemp(n) for n in ("full_ab", "first_ab", "resumed_ab"))
    _, objects = train(compose_cfg(full_dir, switch))
    assert objects["model"].stage == "B" and objects["model"].stage_started_step == 2
    try:
        train(compose_cfg(first_dir, switch + fail))
    except RuntimeError as exc:
        assert "planned failure" in str(exc)
    ckpt = first_dir / "checkpoints" / "step0000004.ckpt"
    assert ckpt.exists()
    train(compose_cfg(resumed_dir, switch + [f"ckpt_path={ckpt}"]))
    full, resumed = losses(full_dir), losses(resumed_dir)
    assert sorted(resumed) == list(range(4, 12))
    for step in resumed:
        assert torch.isclose(torch.tensor(resumed[step]), torch.tensor(full[step]), rtol=1e-5, atol=1e-6), step
