"""Every experiment composes and instantiates (data, model, callbacks, loggers, trainer) on CPU."""
from pathlib import Path

import hydra
import pytest
from omegaconf import open_dict

from rosa_lightning.cli import CONFIG_DIR, instantiate_group

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def shrink(cfg, tiny_backbone_dir, text_corpus):
    """Point hub backbones / data paths at local test files and shorten the rows."""
    with open_dict(cfg):
        if isinstance(cfg.model.backbone, str) or "name_or_path" in cfg.model.backbone:
            cfg.model.backbone = str(tiny_backbone_dir)
        if "path" in cfg.data.source:
            cfg.data.source.path = str(text_corpus)
            cfg.data.seq_len = 64
        if "corpus" in cfg.data.source:  # the stdlib corpus: a few files instead of all of them, short rows
            cfg.data.source.corpus.files = ["bisect.py", "colorsys.py", "heapq.py", "copy.py", "glob.py", "shlex.py"]
            cfg.data.source.corpus.held_out_fraction = 0.3
            cfg.data.seq_len = 64
        if str(cfg.model.get("init_from") or "").startswith("<"):
            cfg.model.init_from = None  # a placeholder the user must set (study_recall_protocol)
        cfg.data.num_workers = 0
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.devices = 1
    return cfg


def test_experiment_list_has_the_recipes():
    assert {"longbench", "mqar_recall"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates(experiment, make_cfg, tiny_backbone_dir, text_corpus):
    cfg = shrink(make_cfg(f"experiment={experiment}"), tiny_backbone_dir, text_corpus)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    model = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_group(cfg.callbacks, "callback")
    loggers = instantiate_group(cfg.logger, "logger")
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert trainer.max_epochs >= 1 and callbacks and loggers
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape[1] == cfg.data.seq_len
    assert ("rosa_token_ids" in batch) == (cfg.model.rosa.token_channel != "off")
    assert model(batch).shape[:2] == batch["input_ids"].shape


def test_longbench_is_the_published_recipe(make_cfg):
    cfg = make_cfg("experiment=longbench")
    assert cfg.model.backbone.name_or_path == "Qwen/Qwen3-1.7B-Base"
    rosa = cfg.model.rosa
    assert (rosa.bits, rosa.window, rosa.global_layers, rosa.rosa_layers) == (4, 2048, 1, None)
    assert cfg.data.seq_len == 16384 and cfg.data.batch_size == 1
    assert list(cfg.model.optimizer.betas) == [0.9, 0.98] and cfg.model.optimizer.eps == 1e-8
    assert cfg.model.weight_decay == 0.01 and cfg.model.scheduler.warmup_steps == 20
    assert dict(cfg.model.lr.A) == {"rosa": 3e-4, "rosa_min": 5e-5}
    assert dict(cfg.model.lr.B) == {"rosa": 1e-4, "rosa_min": 5e-6, "backbone": 5e-6, "backbone_min": 1e-6}
    assert cfg.train.stage == "A" and cfg.train.stage_a_tokens == 1_500_000_000
    assert cfg.trainer.precision == "bf16-true" and cfg.model.torch_dtype == "bfloat16"


def test_default_logger_is_offline_wandb(make_cfg):
    cfg = make_cfg()
    assert cfg.logger.wandb.offline is True
    assert make_cfg("logger=wandb_online").logger.wandb.offline is False
    assert "csv" in make_cfg("logger=csv").logger
