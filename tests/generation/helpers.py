"""Tiny fp32 ROSA models with non-zero ROSA parameters, and incremental-decoding drivers."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import DynamicCache, Qwen3Config

from rosa_lightning.generation import RosaGenerationCache
from rosa_lightning.modeling import RosaConfig, build_rosa_model, rosa_layers

VOCAB = 97


def tiny_config(layers: int = 2, vocab_size: int = VOCAB) -> Qwen3Config:
    return Qwen3Config(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, intermediate_size=128, vocab_size=vocab_size, max_position_embeddings=512,
                       pad_token_id=0)


def tiny_model(token_channel: str = "off", window: Optional[int] = 8, global_layers: int = 1, seed: int = 0,
               rosa_layers_: Optional[list[int]] = None):
    """A 2-layer model (hidden 64, head_dim 16) whose ROSA branches and token channel inject something:
    random e0/e1 and out_proj, random token-channel weights; larger backbone weights so logits are O(1)."""
    torch.manual_seed(seed)
    rosa = RosaConfig(window=window, global_layers=global_layers, token_channel=token_channel, rosa_layers=rosa_layers_, runtime=dict(num_threads=1))
    model = build_rosa_model(tiny_config(), rosa).eval()
    g = activate_branches(model, seed)
    with torch.no_grad():
        channel = getattr(model, "rosa_token", None)
        if channel is not None:
            for p in channel.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def activate_branches(model, seed: int) -> torch.Generator:
    """Make every ROSA branch inject something: O(1) backbone matrices (x0.1 normal), random e0/e1 and
    out_proj = I + 0.1 noise. Returns the generator, for callers that randomise more parameters."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "rosa" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for layer in rosa_layers(model):
            for p in (layer.rosa.e0, layer.rosa.e1):
                p.copy_(torch.randn(p.shape, generator=g))
            w = layer.rosa.out_proj.weight
            w.copy_(torch.eye(w.shape[0]) + 0.1 * torch.randn(w.shape, generator=g))
    return g


def left_pad(prompts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) [B, max length] of 1-D prompts, left-padded with id 0 as HF's generate expects."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = p
        mask[b, width - len(p):] = 1
    return ids, mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids as HF's generate derives them from a left-padded mask."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def incremental_logits(model, ids: torch.Tensor, chunks: Sequence[int], attention_mask: Optional[torch.Tensor] = None,
                       rosa_cache: Optional[RosaGenerationCache] = None) -> torch.Tensor:
    """Logits [B, T, V] from feeding ``ids`` in ``chunks`` (sizes summing to T) through the KV cache and
    the ROSA cache, the way generation does."""
    assert sum(chunks) == ids.shape[1]
    rc = rosa_cache if rosa_cache is not None else RosaGenerationCache.for_model(model)
    rc.reset()
    kv = DynamicCache(config=model.config)
    mask = attention_mask if attention_mask is not None else torch.ones_like(ids)
    pos = positions(mask)
    out, t = [], 0
    for n in chunks:
        sl = slice(t, t + n)
        kwargs = rc.forward_kwargs(ids[:, sl], mask[:, :t + n])
        o = model(ids[:, sl], attention_mask=mask[:, :t + n], position_ids=pos[:, sl], cache=kv, use_cache=True,
                  **kwargs)
        out.append(o.logits)
        t += n
    return torch.cat(out, dim=1)


@torch.no_grad()
def full_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, use_cache=False).logits


def prefill_then_steps(prompt: int, total: int) -> list[int]:
    return [prompt] + [1] * (total - prompt)
