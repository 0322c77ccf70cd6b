"""Sliding-window attention through transformers' own Qwen3 support (docs/method.md §4.1).

Query t sees keys t-W+1 .. t. Leading ``global_layers`` layers keep full causal attention.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from transformers import Qwen3Config


def windowed_config(config: Qwen3Config, window: Optional[int], global_layers: int = 1) -> Qwen3Config:
    """A copy of ``config`` with the window applied (``window=None``: every layer global).

    Sets use_sliding_window, sliding_window, max_window_layers and an explicit layer_types
    (``sliding_window`` alone is silently dropped by Qwen3Config; docs/method.md §4.1).
    """
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be a positive int or None, got {window!r}")
    if not isinstance(global_layers, int) or global_layers < 0:
        raise ValueError(f"global_layers must be an int >= 0, got {global_layers!r}")
    cfg = copy.deepcopy(config)
    n = cfg.num_hidden_layers
    if window is None:
        cfg.use_sliding_window = False
        cfg.sliding_window = None
        cfg.layer_types = ["full_attention"] * n
    else:
        cfg.use_sliding_window = True
        cfg.sliding_window = window
        cfg.max_window_layers = global_layers
        cfg.layer_types = ["full_attention" if i < global_layers else "sliding_attention" for i in range(n)]
    return cfg


def apply_window(model, window: Optional[int], global_layers: int = 1):
    """Convert a built Qwen3 model's attention to the window in place (config + attention modules)."""
    cfg = windowed_config(model.config, window, global_layers)
    for key in ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types"):
        setattr(model.config, key, getattr(cfg, key))
    base = model.model
    for i, layer in enumerate(base.layers):
        attn = layer.self_attn
        attn.layer_type = cfg.layer_types[i]
        attn.sliding_window = cfg.sliding_window if attn.layer_type == "sliding_attention" else None
    base.has_sliding_layers = "sliding_attention" in cfg.layer_types
    return model


def shared_window_masks(model, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache):
    """For a full-sequence sdpa forward of the decoder stack ``model`` with windowed layers: (inputs_embeds,
    position_ids, masks by layer type) with the sliding-window mask additive in the hidden states' dtype, computed
    as ``Qwen3Model.forward`` computes them; None where transformers' own masks are kept (a KV cache, another
    attention implementation, no windowed layer, masks given by the caller).

    ``scaled_dot_product_attention`` turns a boolean mask into an additive one in every call, and autograd keeps
    each layer's copy for the backward: at T = 16k in bf16 that is 512 MiB per windowed layer
    (``experiments/step_memory/``). Built once here, the additive mask is one tensor that every windowed layer
    reads and saves; its values are those of torch's conversion (0 where a key is seen, -inf elsewhere), so the
    attention is unchanged bit for bit.
    """
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    if (isinstance(attention_mask, dict) or not model.has_sliding_layers or cache is not None or use_cache
            or model.config._attn_implementation != "sdpa" or (input_ids is None) == (inputs_embeds is None)):
        return None
    if inputs_embeds is None:
        inputs_embeds = model.embed_tokens(input_ids)
    if position_ids is None:
        position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
    kwargs = dict(config=model.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=None,
                  position_ids=position_ids)
    sliding = create_sliding_window_causal_mask(**kwargs)
    if isinstance(sliding, torch.Tensor) and sliding.dtype == torch.bool:
        sliding = torch.zeros(sliding.shape, dtype=inputs_embeds.dtype, device=sliding.device).masked_fill_(
            sliding.logical_not(), float("-inf"))
    return inputs_embeds, position_ids, {"full_attention": create_causal_mask(**kwargs), "sliding_attention": sliding}
