"""Qwen3 decoder layer with a ROSA branch (docs/method.md §2.4, §2.6).

Installed by swapping ``__class__`` of an existing ``Qwen3DecoderLayer`` (state-dict keys,
``isinstance`` checks and hidden-state capture stay those of HF) and adding a ``rosa``
submodule. The layer reads its settings and the retrieval pipeline from a ``RosaRuntime``
shared by all ROSA layers of one model.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from .branch import RosaBranch
from .branch_inputs import InputOptions
from .config import RosaConfig
from .counterfactual import GradOptions
from .pipeline import RetrievalPipeline


class RosaRuntime:
    """Per-model, non-parameter state: the ROSA config and the retrieval pipeline.

    The pipeline is created lazily (tests, generation) unless one is attached, e.g. by a
    Callback that owns its lifecycle. Copies and pickles drop the pipeline (threads).
    """

    def __init__(self, config: RosaConfig) -> None:
        self.config = config
        self.pipeline: Optional[RetrievalPipeline] = None
        self.owns_pipeline = False

    def get_pipeline(self) -> RetrievalPipeline:
        if self.pipeline is None:
            self.pipeline = RetrievalPipeline(self.config.num_threads).start()
            self.owns_pipeline = True
        return self.pipeline

    def __deepcopy__(self, memo) -> "RosaRuntime":
        return RosaRuntime(copy.deepcopy(self.config, memo))

    def __getstate__(self) -> dict:
        return {"config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])


class RosaQwen3DecoderLayer(Qwen3DecoderLayer):
    """Qwen3 decoder layer plus the parallel ROSA branch ``self.rosa``.

    Extra forward kwarg: ``rosa_cache`` (generation state, see ``branch.py``); it is consumed
    here and not passed on to attention.
    """

    rosa: RosaBranch
    rosa_runtime: RosaRuntime

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, position_ids=None, cache=None,
                use_cache: Optional[bool] = False, position_embeddings=None, **kwargs) -> torch.Tensor:
        rosa_cache = kwargs.pop("rosa_cache", None)
        cfg = self.rosa_runtime.config
        if not cfg.enabled:
            return super().forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        layer_idx = self.self_attn.layer_idx
        pipeline = self.rosa_runtime.get_pipeline() if rosa_cache is None else None
        x = hidden_states
        u = self.input_layernorm(x)
        if cfg.injection == "pre_attn":
            # The branch output enters the stream before attention reads it: no overlap with attention.
            x = x + self.rosa(u, layer_idx, pipeline, rosa_cache)
            return super().forward(x, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                                   use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        pending = self.rosa.launch(u, layer_idx, pipeline, rosa_cache)
        attn, _ = self.self_attn(hidden_states=u, attention_mask=attention_mask, position_ids=position_ids,
                                 cache=cache, use_cache=use_cache, position_embeddings=position_embeddings,
                                 **kwargs)
        # (x + attn) first: with a zero branch the sum is bitwise that of the plain layer.
        h = (x + attn) + self.rosa.finish(pending)
        return h + self.mlp(self.post_attention_layernorm(h))


def install_rosa_layer(layer: Qwen3DecoderLayer, runtime: RosaRuntime, hidden_size: int) -> RosaQwen3DecoderLayer:
    """Turn ``layer`` into a ``RosaQwen3DecoderLayer`` in place (idempotent)."""
    if not isinstance(layer, Qwen3DecoderLayer):
        raise TypeError(f"layer must be a Qwen3DecoderLayer, got {type(layer).__name__}")
    cfg = runtime.config
    ref = layer.input_layernorm.weight
    if not isinstance(layer, RosaQwen3DecoderLayer) or layer.rosa.bits != cfg.bits:
        layer.__class__ = RosaQwen3DecoderLayer
        layer.rosa = RosaBranch(hidden_size, cfg.bits, _grad_options(cfg), dtype=ref.dtype, device=ref.device)
    layer.rosa.grad_options = _grad_options(cfg)
    layer.rosa.input_options = _input_options(cfg)
    layer.rosa_runtime = runtime
    return layer


def _input_options(cfg: RosaConfig) -> InputOptions:
    return InputOptions(kv_shift=cfg.kv_shift, qk_tied=cfg.qk_tied, center_u=cfg.center_u)


def _grad_options(cfg: RosaConfig) -> GradOptions:
    return GradOptions(field=cfg.cf_field, mode=cfg.grad_mode, k_credit=cfg.k_credit, e0_term=cfg.cf_e0_term,
                       relax_beta=float(cfg.relax_beta))
