"""The ROSA Qwen3 causal LM, built by construction from its config (docs/method.md §2.6, §3).

``RosaQwen3ForCausalLM`` is a ``Qwen3ForCausalLM`` whose config carries ``config.rosa`` (a ``RosaConfig`` dict). Its
constructor builds the decoder stack ``RosaQwen3Model`` with a ``RosaQwen3DecoderLayer`` at every ROSA index and
HF's ``Qwen3DecoderLayer`` elsewhere, and the token channel when it is on, so a merged ``save_pretrained``
directory reloads into the same model with ``from_pretrained``. ``apply_rosa`` converts a plain Qwen3 model that
is already loaded.

The decoder stack owns the batch retriever (``retrieval.pipeline.RetrievalPipeline``, started lazily or attached
by the training callback) and hands the layers a retriever through the forward kwarg ``rosa_retriever``: the
streaming generation state when one is passed as ``rosa_cache``, the batch pipeline otherwise.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn
from transformers import Qwen3ForCausalLM, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import (Qwen3DecoderLayer, Qwen3PreTrainedModel, Qwen3RMSNorm,
                                                      Qwen3RotaryEmbedding)

from rosa_lightning.retrieval.pipeline import RetrievalPipeline
from rosa_lightning.retrieval.tokens import rosa_next_token

from .auto import RosaQwen3Config, as_rosa_config
from .branch import RosaBranch, RosaLinear, deferred_init, init_deferred
from .config import RosaConfig
from .generate import RosaGenerationMixin
from .layer import RosaQwen3DecoderLayer
from .losses import chunked_answer_accuracy, chunked_next_token_loss
from .parameters import is_rosa_parameter, rosa_layers
from .token_channel import RosaTokenChannel
from .windowing import shared_window_masks


def _is_rosa_module(module: nn.Module) -> bool:
    return isinstance(module, (RosaLinear, RosaBranch, RosaTokenChannel))


def _rosa_init(module: nn.Module) -> bool:
    """ROSA init for ROSA modules (missing keys at load time); False for any other module. While the model is
    being built (``deferred_init``) ROSA modules are left alone: the constructor initialises them afterwards."""
    if _is_rosa_module(module):
        if not init_deferred():
            module.reset_parameters()
        return True
    return False


def _model_rosa_config(config) -> RosaConfig:
    rosa = getattr(config, "rosa", None)
    return RosaConfig.from_dict(rosa) if rosa is not None else RosaConfig()


class RosaQwen3Model(Qwen3Model):
    """The decoder stack of ``RosaQwen3ForCausalLM``: Qwen3's, with ROSA layers at ``rosa.layers_for(L)``.

    HF initialises missing weights submodel by submodel with each submodel's own ``_init_weights``; this class
    applies the ROSA init to branches. Extra forward kwarg: ``rosa_cache``, a streaming retriever (generation).
    """

    def __init__(self, config, rosa: Optional[RosaConfig] = None) -> None:
        # Qwen3Model.__init__ with the layer class chosen per index (tests/modeling/test_construction.py checks that
        # the two build the same submodules and attributes).
        Qwen3PreTrainedModel.__init__(self, config)
        self.rosa_config = rosa if rosa is not None else _model_rosa_config(config)
        chosen = set(self.rosa_config.layers_for(config.num_hidden_layers))
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([
            RosaQwen3DecoderLayer(config, i, self.rosa_config) if i in chosen else Qwen3DecoderLayer(config, i)
            for i in range(config.num_hidden_layers)])
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in self.config.layer_types
        self.retrieval_pipeline: Optional[RetrievalPipeline] = None
        self.owns_pipeline = False
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if not _rosa_init(module):
            super()._init_weights(module)

    def batch_retriever(self) -> RetrievalPipeline:
        """The attached pipeline, or one started lazily (owned by the model) with ``runtime.num_threads``."""
        if self.retrieval_pipeline is None:
            self.retrieval_pipeline = RetrievalPipeline(self.rosa_config.runtime.num_threads).start()
            self.owns_pipeline = True
        return self.retrieval_pipeline

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, rosa_cache=None, **kwargs):
        kwargs.pop("rosa_retriever", None)
        retriever = None
        if self.rosa_config.enabled:
            retriever = kwargs["rosa_retriever"] = rosa_cache if rosa_cache is not None else self.batch_retriever()
        shared = shared_window_masks(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache)
        if shared is not None:
            input_ids, (inputs_embeds, position_ids, attention_mask) = None, shared
        try:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        finally:
            if retriever is not None:
                retriever.end_forward()  # deferred counterfactual jobs may start: the backward comes next


class RosaQwen3ForCausalLM(RosaGenerationMixin, Qwen3ForCausalLM):
    """Qwen3 causal LM with ROSA branches (and optionally the token channel).

    Extra forward kwargs: ``rosa_token_ids`` int [B, T] (-1 = none), the token channel's
    retrieved next-token ids, computed with ``rosa_next_token`` when absent; ``rosa_cache``
    (the streaming retriever, passed through to the decoder stack). ``generate()`` creates and streams that
    state itself (``modeling/generate.py``).

    Initialisation: the backbone is initialised as HF's Qwen3 (same random numbers for a seed), then the ROSA
    modules in a fixed order: each ROSA layer's branch by layer index (Q, K, V Xavier-uniform, out_proj identity,
    e0 = e1 = 0), then the token channel (zeros).
    """

    config_class = RosaQwen3Config
    # ROSA parameters absent from a plain Qwen3 checkpoint get the ROSA init (``_init_weights``); they are
    # expected to be missing there, so HF's load report does not list them.
    _keys_to_ignore_on_load_missing = [r"(^|\.)rosa(_[A-Za-z0-9]+)?\."]

    def __init__(self, config) -> None:
        config = as_rosa_config(config)
        rosa = _model_rosa_config(config)
        if config.hidden_size % rosa.bits:
            raise ValueError(f"hidden_size {config.hidden_size} is not divisible by rosa.bits={rosa.bits}")
        config.rosa = rosa.to_dict()
        with deferred_init():
            # Qwen3ForCausalLM.__init__ with the ROSA decoder stack and the token channel
            Qwen3PreTrainedModel.__init__(self, config)
            self.model = RosaQwen3Model(config, rosa)
            self.vocab_size = config.vocab_size
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            if rosa.token_channel != "off":
                self.rosa_token = RosaTokenChannel(config.hidden_size, config.vocab_size, rosa.token_channel)
            self.post_init()
        self._init_rosa_modules()

    @property
    def rosa_config(self) -> RosaConfig:
        """The model's ``RosaConfig`` (one object, shared by the decoder stack and every ROSA layer)."""
        return self.model.rosa_config

    def _init_rosa_modules(self) -> None:
        for layer in rosa_layers(self):
            branch = layer.rosa
            for proj in (branch.q_proj, branch.k_proj, branch.v_proj, branch.out_proj):
                proj.reset_parameters()
            branch.reset_parameters()
        channel = getattr(self, "rosa_token", None)
        if channel is not None:
            for module in channel.modules():
                if _is_rosa_module(module):
                    module.reset_parameters()

    def _init_weights(self, module: nn.Module) -> None:
        # Missing ROSA keys at load time get the ROSA init, not HF's normal init.
        if not _rosa_init(module):
            super()._init_weights(module)

    def _channel_inputs(self, input_ids, inputs_embeds, rosa_token_ids):
        """``(input_ids, inputs_embeds)`` for the decoder stack: with the token channel on, the embeddings plus
        the channel's injection (and no ids); otherwise unchanged."""
        channel = getattr(self, "rosa_token", None)
        if channel is None or not self.rosa_config.enabled:
            return input_ids, inputs_embeds
        if rosa_token_ids is None:
            if input_ids is None:
                raise ValueError("the token channel needs input_ids or rosa_token_ids")
            rosa_token_ids = rosa_next_token(input_ids.cpu()).to(input_ids.device)
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        inputs_embeds = inputs_embeds + channel(rosa_token_ids.to(inputs_embeds.device), self.model.embed_tokens)
        return None, inputs_embeds

    def final_hidden_states(self, input_ids: torch.Tensor, rosa_token_ids: Optional[torch.Tensor] = None,
                            **kwargs) -> torch.Tensor:
        """The lm_head's input: hidden states [B, T, C] after the final norm (no KV cache), for a loss that
        computes the logits chunk by chunk instead of all [B, T, V] at once."""
        return self._final_hidden(input_ids, rosa_token_ids, **kwargs)

    def _final_hidden(self, input_ids: torch.Tensor, rosa_token_ids: Optional[torch.Tensor] = None,
                      **kwargs) -> torch.Tensor:
        input_ids, inputs_embeds = self._channel_inputs(input_ids, None, rosa_token_ids)
        return self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False, **kwargs).last_hidden_state

    def chunked_loss(self, input_ids: torch.Tensor, labels: torch.Tensor, chunk_tokens: int,
                     rosa_token_ids: Optional[torch.Tensor] = None, answer_mask: Optional[torch.Tensor] = None
                     ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The training loss without [B, T, V] logits: (mean next-token loss over the scored ``labels``, number of
        scored tokens, answer accuracy or None without ``answer_mask``), from ``losses.chunked_next_token_loss``
        and ``losses.chunked_answer_accuracy``. One call for the hidden states and the LM head, so that a sharded
        model (FSDP2, ``sharding.shard_model``) has the head's weights gathered while it computes the loss."""
        hidden = self._final_hidden(input_ids, rosa_token_ids)
        loss, n_scored = chunked_next_token_loss(hidden, self.lm_head, labels, chunk_tokens)
        acc = (None if answer_mask is None else
               chunked_answer_accuracy(hidden.detach(), self.lm_head, input_ids, answer_mask, chunk_tokens))
        return loss, n_scored, acc

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, rosa_token_ids=None, **kwargs):
        input_ids, inputs_embeds = self._channel_inputs(input_ids, inputs_embeds, rosa_token_ids)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **kwargs)


def apply_rosa(model: Qwen3ForCausalLM, rosa: RosaConfig) -> RosaQwen3ForCausalLM:
    """Convert a loaded Qwen3 causal LM into a ``RosaQwen3ForCausalLM`` with ``rosa`` and return it.

    The result is a new model object built by construction; it takes over the given model's parameters and
    buffers (the same tensors, not copies), so the given model must not be used afterwards. ROSA parameters that
    the given model already has (same names and shapes, e.g. a ROSA model converted again) are kept, the others
    get the ROSA init. Attention windows are not changed (see ``apply_window``).
    """
    if not isinstance(model, Qwen3ForCausalLM):
        raise TypeError(f"model must be a Qwen3ForCausalLM, got {type(model).__name__}")
    if not isinstance(rosa, RosaConfig):
        raise TypeError(f"rosa must be a RosaConfig, got {type(rosa).__name__}")
    if model.config.hidden_size % rosa.bits:
        raise ValueError(f"hidden_size {model.config.hidden_size} is not divisible by rosa.bits={rosa.bits}")
    config = as_rosa_config(copy.deepcopy(model.config))
    config.rosa = rosa.to_dict()
    ref = model.model.embed_tokens.weight
    with torch.device(ref.device):
        default = torch.get_default_dtype()
        torch.set_default_dtype(ref.dtype if ref.dtype.is_floating_point else default)
        try:
            with torch.device("meta"):
                converted = RosaQwen3ForCausalLM(config)
        finally:
            torch.set_default_dtype(default)
    old = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    kept = _take_over(converted, old)
    fresh = [m for m in _rosa_modules_in_init_order(converted) if not all(n in kept for n in m[1])]
    for module, _names in fresh:
        module.to_empty(device=ref.device, recurse=False)
        module.reset_parameters()
    converted.generation_config = model.generation_config
    converted.tie_weights()
    converted.train(model.training)
    return converted


def _take_over(converted: nn.Module, tensors: dict[str, torch.Tensor]) -> set[str]:
    """Put the given model's tensors into ``converted`` (meta) by name; returns the names taken."""
    taken = set()
    for name, tensor in list(converted.named_parameters(remove_duplicate=False)) + \
            list(converted.named_buffers(remove_duplicate=False)):
        source = tensors.get(name)
        if source is None or source.shape != tensor.shape:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = converted.get_submodule(owner_name)
        if isinstance(tensor, nn.Parameter):
            owner._parameters[leaf] = source if isinstance(source, nn.Parameter) else nn.Parameter(source)
        else:
            owner._buffers[leaf] = source
        taken.add(name)
    missing = [n for n, t in converted.named_parameters(remove_duplicate=False)
               if n not in taken and not is_rosa_parameter(n)]
    if missing:
        raise ValueError(f"apply_rosa: the model lacks Qwen3 parameters {missing[:8]}")
    return taken


def _rosa_modules_in_init_order(model: RosaQwen3ForCausalLM) -> list[tuple[nn.Module, list[str]]]:
    """(module, its parameter names) for every ROSA module whose parameters it holds directly, in init order."""
    out = []
    prefix = {id(m): n for n, m in model.named_modules()}
    order = [layer.rosa for layer in rosa_layers(model)] + ([model.rosa_token] if hasattr(model, "rosa_token") else [])
    for top in order:
        for module in top.modules():
            own = [f"{prefix[id(module)]}.{k}" for k, _ in module.named_parameters(recurse=False)]
            if own:
                out.append((module, own))
    return out


def attach_pipeline(model: nn.Module, pipeline: Optional[RetrievalPipeline]) -> None:
    """Make ``pipeline`` the model's batch retriever (None: back to a lazily created one).

    The caller owns ``pipeline`` (start/close). A lazily created pipeline is closed here.
    """
    stack: RosaQwen3Model = model.model
    if stack.retrieval_pipeline is not None and stack.owns_pipeline and stack.retrieval_pipeline is not pipeline:
        stack.retrieval_pipeline.close()
    stack.retrieval_pipeline = pipeline
    stack.owns_pipeline = False


def rosa_timing_stats(model: nn.Module, reset: bool = True) -> dict:
    """Summed retrieval timing over all ROSA layers since the last reset.

    Returns: retrieval_cpu_s (kernel time of the forward's jobs in the worker), wait_s (forward blocked),
    overlap_fraction (1 - wait/retrieval: share of the forward's retrieval hidden behind other work), calls;
    deferred_cpu_s (kernel time of deferred counterfactual jobs) and backward_wait_s (backward blocked on them).
    """
    sums = dict.fromkeys(("retrieval_s", "wait_s", "calls", "deferred_s", "backward_wait_s"), 0.0)
    for layer in rosa_layers(model):
        t = layer.rosa.timing
        for key in sums:
            sums[key] += getattr(t, key)
        if reset:
            t.reset()
    retrieval, wait = sums["retrieval_s"], sums["wait_s"]
    overlap = max(0.0, min(1.0, 1.0 - wait / retrieval)) if retrieval > 0 else 0.0
    return {"retrieval_cpu_s": retrieval, "wait_s": wait, "overlap_fraction": overlap, "calls": int(sums["calls"]),
            "deferred_cpu_s": sums["deferred_s"], "backward_wait_s": sums["backward_wait_s"]}
