"""Sliding-window attention through transformers' own Qwen3 support (docs/method.md §4.1).

Query t sees keys t-W+1 .. t. Leading ``global_layers`` layers keep full causal attention.
"""
from __future__ import annotations

import copy
from typing import Optional

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
