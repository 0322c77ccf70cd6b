"""ROSA-patched Qwen3 causal LM: class, in-place patching, parameter helpers, timing (docs/method.md §2.6, §3).

``RosaQwen3ForCausalLM`` is ``Qwen3ForCausalLM`` whose config carries ``config.rosa`` (a
``RosaConfig`` dict); its constructor installs the ROSA layers and the token channel, so a merged
``save_pretrained`` directory reloads into the same model with ``from_pretrained``.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn
from transformers import Qwen3ForCausalLM, Qwen3Model

from rosa_lightning.generation.mixin import RosaGenerationMixin

from .auto import RosaQwen3Config
from .branch import RosaBranch, RosaLinear
from .config import RosaConfig
from .layer import RosaQwen3DecoderLayer, RosaRuntime, install_rosa_layer
from .pipeline import RetrievalPipeline
from .token_channel import RosaTokenChannel
from .windowing import apply_window


def _next_token_ids(input_ids: torch.Tensor) -> torch.Tensor:
    try:
        from rosa_lightning.retrieval.tokens import rosa_next_token
    except ImportError as exc:
        raise ImportError("the token channel needs rosa_lightning.retrieval.rosa_next_token (build the kernel), "
                          "or pass rosa_token_ids= to forward") from exc
    return rosa_next_token(input_ids.cpu()).to(input_ids.device)


def _rosa_init(module: nn.Module) -> bool:
    """ROSA init for ROSA modules (missing keys at load time); False for any other module."""
    if isinstance(module, (RosaLinear, RosaBranch, RosaTokenChannel)):
        module.reset_parameters()
        return True
    return False


class RosaQwen3Model(Qwen3Model):
    """The decoder stack of ``RosaQwen3ForCausalLM``.

    HF initialises missing weights submodel by submodel with each submodel's own
    ``_init_weights``; this subclass makes the decoder stack apply the ROSA init to branches.
    """

    def _init_weights(self, module: nn.Module) -> None:
        if not _rosa_init(module):
            super()._init_weights(module)


class RosaQwen3ForCausalLM(RosaGenerationMixin, Qwen3ForCausalLM):
    """Qwen3 causal LM with ROSA branches (and optionally the token channel).

    Extra forward kwargs: ``rosa_token_ids`` int [B, T] (-1 = none), the token channel's
    retrieved next-token ids, computed with ``rosa_next_token`` when absent; ``rosa_cache``
    (generation state, passed through to the ROSA layers). ``generate()`` creates and streams that
    state itself (``rosa_lightning.generation``).
    """

    config_class = RosaQwen3Config
    # ROSA parameters absent from a plain Qwen3 checkpoint get the ROSA init (``_init_weights``); they are
    # expected to be missing there, so HF's load report does not list them.
    _keys_to_ignore_on_load_missing = [r"(^|\.)rosa(_[A-Za-z0-9]+)?\."]

    def __init__(self, config) -> None:
        super().__init__(config)
        rosa = getattr(config, "rosa", None)
        _install(self, RosaConfig.from_dict(rosa) if rosa is not None else RosaConfig())

    def _init_weights(self, module: nn.Module) -> None:
        # Missing ROSA keys at load time get the ROSA init, not HF's normal init.
        if not _rosa_init(module):
            super()._init_weights(module)

    def _channel_inputs(self, input_ids, inputs_embeds, rosa_token_ids):
        """``(input_ids, inputs_embeds)`` for the decoder stack: with the token channel on, the embeddings plus
        the channel's injection (and no ids); otherwise unchanged."""
        channel = getattr(self, "rosa_token", None)
        if channel is None or not self.rosa_runtime.config.enabled:
            return input_ids, inputs_embeds
        if rosa_token_ids is None:
            if input_ids is None:
                raise ValueError("the token channel needs input_ids or rosa_token_ids")
            rosa_token_ids = _next_token_ids(input_ids)
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        inputs_embeds = inputs_embeds + channel(rosa_token_ids.to(inputs_embeds.device), self.model.embed_tokens)
        return None, inputs_embeds

    def final_hidden_states(self, input_ids: torch.Tensor, rosa_token_ids: Optional[torch.Tensor] = None,
                            **kwargs) -> torch.Tensor:
        """The lm_head's input: hidden states [B, T, C] after the final norm (no KV cache), for a loss that
        computes the logits chunk by chunk instead of all [B, T, V] at once."""
        input_ids, inputs_embeds = self._channel_inputs(input_ids, None, rosa_token_ids)
        return self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False, **kwargs).last_hidden_state

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, rosa_token_ids=None, **kwargs):
        input_ids, inputs_embeds = self._channel_inputs(input_ids, inputs_embeds, rosa_token_ids)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **kwargs)


def _install(model: Qwen3ForCausalLM, rosa: RosaConfig) -> None:
    cfg = model.config
    if not isinstance(cfg, RosaQwen3Config):
        # a Qwen3 loaded elsewhere and converted in place: its config (shared by every submodule) becomes
        # the ROSA config type, so save_pretrained writes model_type rosa_qwen3 and reloads through the Auto classes
        cfg.__class__ = RosaQwen3Config
    model.model.__class__ = RosaQwen3Model
    runtime = RosaRuntime(rosa)
    model.rosa_runtime = runtime
    for i in rosa.layers_for(cfg.num_hidden_layers):
        install_rosa_layer(model.model.layers[i], runtime, cfg.hidden_size)
    ref = model.model.embed_tokens.weight
    if rosa.token_channel != "off" and getattr(model, "rosa_token", None) is None:
        model.rosa_token = RosaTokenChannel(cfg.hidden_size, cfg.vocab_size, rosa.token_channel,
                                            dtype=ref.dtype, device=ref.device)
    cfg.rosa = rosa.to_dict()


def apply_rosa(model: Qwen3ForCausalLM, rosa: RosaConfig) -> RosaQwen3ForCausalLM:
    """Patch a Qwen3 causal LM in place: ROSA layers, token channel, class and ``config.rosa``.

    Does not change attention windows (see ``apply_window``). Layers that already carry a
    branch with the same ``bits`` keep their parameters.
    """
    if not isinstance(model, Qwen3ForCausalLM):
        raise TypeError(f"model must be a Qwen3ForCausalLM, got {type(model).__name__}")
    if not isinstance(rosa, RosaConfig):
        raise TypeError(f"rosa must be a RosaConfig, got {type(rosa).__name__}")
    if model.config.hidden_size % rosa.bits:
        raise ValueError(f"hidden_size {model.config.hidden_size} is not divisible by rosa.bits={rosa.bits}")
    model.__class__ = RosaQwen3ForCausalLM
    _install(model, rosa)
    return model


def is_rosa_parameter(name: str) -> bool:
    """True for parameter names of ROSA modules (a path component ``rosa`` or ``rosa_*``)."""
    return any(part == "rosa" or part.startswith("rosa_") for part in name.split("."))


def rosa_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if is_rosa_parameter(n))


def rosa_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All ROSA parameters (branches and token channel), in ``named_parameters`` order."""
    return [p for _, p in rosa_named_parameters(model)]


def freeze_backbone(model: nn.Module) -> tuple[int, int]:
    """Stage A: ``requires_grad=False`` on every non-ROSA parameter. Returns (trainable, frozen) counts."""
    trainable = frozen = 0
    for name, p in model.named_parameters():
        keep = is_rosa_parameter(name)
        p.requires_grad_(keep)
        if keep:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


def rosa_layers(model: nn.Module) -> list[RosaQwen3DecoderLayer]:
    return [m for m in model.modules() if isinstance(m, RosaQwen3DecoderLayer)]


def attach_pipeline(model: nn.Module, pipeline: Optional[RetrievalPipeline]) -> None:
    """Make ``pipeline`` the model's retrieval executor (None: back to a lazily created one).

    The caller owns ``pipeline`` (start/close). A lazily created pipeline is closed here.
    """
    runtime: RosaRuntime = model.rosa_runtime
    if runtime.pipeline is not None and runtime.owns_pipeline and runtime.pipeline is not pipeline:
        runtime.pipeline.close()
    runtime.pipeline = pipeline
    runtime.owns_pipeline = False


def rosa_timing_stats(model: nn.Module, reset: bool = True) -> dict:
    """Summed retrieval timing over all ROSA layers since the last reset.

    Returns: retrieval_cpu_s (kernel time in the worker), wait_s (main thread blocked),
    overlap_fraction (1 - wait/retrieval: share of retrieval hidden behind other work), calls.
    """
    retrieval = wait = 0.0
    calls = 0
    for layer in rosa_layers(model):
        t = layer.rosa.timing
        retrieval, wait, calls = retrieval + t.retrieval_s, wait + t.wait_s, calls + t.calls
        if reset:
            t.reset()
    overlap = max(0.0, min(1.0, 1.0 - wait / retrieval)) if retrieval > 0 else 0.0
    return {"retrieval_cpu_s": retrieval, "wait_s": wait, "overlap_fraction": overlap, "calls": calls}
