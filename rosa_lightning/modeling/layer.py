"""Qwen3 decoder layer with a ROSA branch (docs/method.md §2.4, §2.6).

``RosaQwen3DecoderLayer`` is a ``Qwen3DecoderLayer`` (same state-dict keys, ``isinstance`` checks and hidden-state
capture as HF's) built with a ``rosa`` branch from the model's ``RosaConfig``. It gets
its retriever (the retrieval seam) from the decoder stack as the forward kwarg ``rosa_retriever``.
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from .branch import RosaBranch
from .config import RosaConfig


class RosaQwen3DecoderLayer(Qwen3DecoderLayer):
    """Qwen3 decoder layer plus the parallel ROSA branch ``self.rosa``.

    Args:
        config: the Qwen3 config.
        layer_idx: the decoder layer's index.
        rosa: the model's ``RosaConfig``; the layer keeps a reference to that object as ``rosa_config`` (shared by
            every layer of the model, so ``rosa_config.enabled`` switches all of them).

    Extra forward kwarg: ``rosa_retriever`` (``rosa_lightning.retrieval.seam.Retriever``); it is consumed here and
    not passed on to attention.
    """

    def __init__(self, config, layer_idx: int, rosa: RosaConfig) -> None:
        super().__init__(config, layer_idx)
        if not isinstance(rosa, RosaConfig):
            raise TypeError(f"rosa must be a RosaConfig, got {type(rosa).__name__}")
        self.rosa_config = rosa
        self.rosa = RosaBranch(config.hidden_size, rosa.bits, rosa.grad, input_options=rosa.inputs)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, position_ids=None, cache=None,
                use_cache: Optional[bool] = False, position_embeddings=None, **kwargs) -> torch.Tensor:
        retriever = kwargs.pop("rosa_retriever", None)
        cfg = self.rosa_config
        if not cfg.enabled:
            return super().forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        if retriever is None:
            raise ValueError(f"ROSA layer {self.self_attn.layer_idx} was called without a retriever: call the decoder "
                             f"stack (RosaQwen3Model), which passes its own, or pass rosa_retriever=")
        layer_idx = self.self_attn.layer_idx
        # Under activation checkpointing the backward recomputes this forward: the retriever keeps the result so
        # the recompute does not run the kernel again.
        reuse = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        x = hidden_states
        u = self.input_layernorm(x)
        if cfg.injection == "pre_attn":
            # The branch output enters the stream before attention reads it: no overlap with attention.
            x = x + self.rosa(u, layer_idx, retriever, reuse)
            return super().forward(x, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                                   use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        pending = self.rosa.launch(u, layer_idx, retriever, reuse)
        attn, _ = self.self_attn(hidden_states=u, attention_mask=attention_mask, position_ids=position_ids,
                                 cache=cache, use_cache=use_cache, position_embeddings=position_embeddings,
                                 **kwargs)
        h = x + attn
        if cfg.injection == "post_mlp":
            # The branch output joins the layer's output: the retrieval overlaps attention and the MLP, and this
            # layer's MLP does not read the branch (the next layer does). With a zero branch: bitwise the plain layer.
            out = h + self.mlp(self.post_attention_layernorm(h))
            return out + self.rosa.finish(pending)
        # (x + attn) first: with a zero branch the sum is bitwise that of the plain layer.
        h = h + self.rosa.finish(pending)
        return h + self.mlp(self.post_attention_layernorm(h))
