"""Fixtures for the framework tests: the real Hydra composition shrunk for CPU, a tiny local backbone
directory (random Qwen3 weights + a word-level tokenizer built here), and a small text corpus."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from rosa_lightning.cli import CONFIG_DIR

WORDS = [f"w{i}" for i in range(120)]
TINY_BACKBONE = ["model.backbone.hidden_size=32", "model.backbone.intermediate_size=64",
                 "model.backbone.num_attention_heads=2", "model.backbone.num_key_value_heads=1"]


def compose_cfg(tmp_path: Path, overrides: list[str], config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, outputs under ``tmp_path``, resolvable ``hydra:`` keys."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str) -> DictConfig:
        return compose_cfg(tmp_path, list(overrides))
    return make


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny_qwen3"))


def save_tiny_backbone(path: Path) -> Path:
    """A local 'pretrained' Qwen3 directory: config, random weights and a tokenizer (vocab 128)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=4096, tie_word_embeddings=True, eos_token_id=1)
    Qwen3ForCausalLM(config).save_pretrained(path)
    _word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A jsonl file of 60 documents of 20..80 words (field "text")."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for _ in range(60):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(20, 80)))}) + "\n")
    return path


class FailAtStep:
    """A callback that raises after training step ``step`` (exception-path tests)."""

    def __new__(cls, step: int = 1):
        import lightning as L

        class _Fail(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step >= step:
                    raise RuntimeError("planned failure")

        return _Fail()
