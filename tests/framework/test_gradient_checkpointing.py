"""model.gradient_checkpointing=true through train.py: the same losses as without, one retrieval per ROSA layer."""
import csv

import pytest
import torch

from rosa_lightning.cli import train
from tests.framework.conftest import compose_cfg

COMMON = ["logger=csv", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0", "data.batch_size=4",
          "data.source.num_train=24", "data.seq_len=64", "data.source.task.num_pairs=4", "trainer.max_steps=4",
          "model.rosa.runtime.num_threads=1"]


def _losses(out_dir):
    rows = list(csv.DictReader(open(out_dir / "csv" / "version_0" / "metrics.csv")))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def test_checkpointed_training_gives_the_same_losses(tmp_path_factory):
    plain_dir, ckpt_dir = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("ckpt")
    train(compose_cfg(plain_dir, COMMON))
    _, objects = train(compose_cfg(ckpt_dir, COMMON + ["model.gradient_checkpointing=true"]))
    model = objects["model"].model
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    plain, ckpt = _losses(plain_dir), _losses(ckpt_dir)
    assert sorted(plain) == sorted(ckpt) == [0, 1, 2, 3]
    for step in plain:  # the step after a checkpointed backward starts from the same weights
        assert torch.isclose(torch.tensor(ckpt[step]), torch.tensor(plain[step]), rtol=1e-6, atol=1e-7), step


def test_bad_value_is_refused(tmp_path):
    with pytest.raises(Exception, match="model.gradient_checkpointing must be true or false"):
        train(compose_cfg(tmp_path, COMMON + ["model.gradient_checkpointing=maybe"]))
