"""Tiny Qwen3 configs for the modeling tests (2 layers, hidden 64, head_dim 16; no download)."""
import pytest
import torch

from transformers import Qwen3Config

from rosa_lightning.modeling.finite_diff import randomize_values  # noqa: F401  (tests import it from here)


def tiny_config(layers: int = 2, **overrides) -> Qwen3Config:
    kw = dict(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, intermediate_size=128, vocab_size=97, max_position_embeddings=512)
    kw.update(overrides)
    return Qwen3Config(**kw)


@pytest.fixture
def cfg():
    return tiny_config()


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 97, (2, 48), generator=g)


