"""Tiny Qwen3 configs for the modeling tests (2 layers, hidden 64, head_dim 16; no download)."""
import pytest
import torch
from transformers import Qwen3Config


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


def randomize_values(model, scale: float = 1.0, seed: int = 0) -> None:
    """Give every ROSA branch non-zero e0/e1 so it injects something."""
    from rosa_lightning.modeling import rosa_layers
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in rosa_layers(model):
            for p in (layer.rosa.e0, layer.rosa.e1):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
