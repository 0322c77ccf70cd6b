"""``build_rosa_model``: a windowed, ROSA-patched Qwen3 from a checkpoint or a config (docs/method.md §2.6, §4.1)."""
from __future__ import annotations

import os
from typing import Any, Union

import torch
from transformers import Qwen3Config

from .auto import as_rosa_config
from .config import RosaConfig
from .model import RosaQwen3ForCausalLM
from .parameters import is_rosa_parameter
from .windowing import windowed_config


def _offline_hint(backbone: str) -> str:
    return (f"Could not load the Qwen3 backbone {backbone!r} (no network or not cached). Download it once, "
            f"e.g. `huggingface-cli download {backbone} --local-dir /path/to/dir`, and point "
            f"`backbone` (model.backbone in the Hydra config) at that local directory.")


def _load_config(backbone: str) -> Qwen3Config:
    looks_local = os.path.isabs(backbone) or backbone.startswith((".", "~")) or os.path.exists(backbone)
    if looks_local and not os.path.isdir(os.path.expanduser(backbone)):
        raise FileNotFoundError(f"backbone directory {backbone!r} does not exist; expected a directory with "
                                f"config.json and the weights, or a hub id")
    path = os.path.expanduser(backbone) if looks_local else backbone
    try:
        config = Qwen3Config.from_pretrained(path)
    except OSError as exc:
        if looks_local:
            raise OSError(f"backbone directory {backbone!r} holds no loadable Qwen3 config.json: {exc}") from exc
        raise OSError(_offline_hint(backbone)) from exc
    return config


def build_rosa_model(backbone: Union[str, os.PathLike, Qwen3Config, dict[str, Any]], rosa: RosaConfig, *,
                     torch_dtype: Union[torch.dtype, str, None] = None, attn_implementation: str = "sdpa",
                     from_scratch: bool = False) -> RosaQwen3ForCausalLM:
    """Build the model: sliding-window config (``rosa.window``, ``rosa.global_layers``) plus ROSA layers.

    Args:
        backbone: hub id or local directory of a Qwen3 checkpoint (pretrained weights loaded; the
            only keys allowed to be missing are ROSA ones, which get the ROSA init), or a
            ``Qwen3Config`` / config dict (random init).
        rosa: the ROSA configuration.
        torch_dtype: parameter dtype (e.g. torch.bfloat16); None = the default (checkpoint dtype when loading).
        attn_implementation: "sdpa", "eager", "flex_attention", "flash_attention_2".
        from_scratch: with a checkpoint, use only its config and initialise randomly.
    """
    if not isinstance(rosa, RosaConfig):
        raise TypeError(f"rosa must be a RosaConfig, got {type(rosa).__name__}")
    if isinstance(torch_dtype, str):
        torch_dtype = getattr(torch, torch_dtype)
    if isinstance(backbone, dict):
        backbone = Qwen3Config(**backbone)
    if isinstance(backbone, Qwen3Config):
        base_config, path = backbone, None
    elif isinstance(backbone, (str, os.PathLike)):
        path = os.fspath(backbone)
        base_config = _load_config(path)
        path = os.path.expanduser(path) if os.path.isdir(os.path.expanduser(path)) else path
    else:
        raise TypeError(f"backbone must be a hub id, a directory, a Qwen3Config or a dict, got {type(backbone).__name__}")
    config = as_rosa_config(windowed_config(base_config, rosa.window, rosa.global_layers))
    config.rosa = rosa.to_dict()
    if path is None or from_scratch:
        config._attn_implementation = attn_implementation
        model = RosaQwen3ForCausalLM(config)
        return model.to(torch_dtype) if torch_dtype is not None else model
    model, info = RosaQwen3ForCausalLM.from_pretrained(
        path, config=config, dtype=torch_dtype, attn_implementation=attn_implementation, output_loading_info=True)
    bad_missing = [k for k in info.get("missing_keys", []) if not is_rosa_parameter(k)]
    unexpected = list(info.get("unexpected_keys", []))
    if bad_missing or unexpected:
        raise ValueError(f"checkpoint {path!r} does not match Qwen3 + ROSA: missing non-ROSA keys {bad_missing[:8]}, "
                         f"unexpected keys {unexpected[:8]}")
    return model
