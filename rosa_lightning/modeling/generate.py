"""HF ``generate()`` for ROSA models: a fresh ``RosaGenerationCache`` per call (docs/generation.md §3).

``RosaGenerationMixin`` goes before ``Qwen3ForCausalLM`` in the bases of ``RosaQwen3ForCausalLM``.
``generate`` creates (or resets) the ROSA cache and hands it to HF's loop as a model kwarg;
``prepare_inputs_for_generation`` announces each forward's new tokens to it (``begin``) and adds
the streamed token-channel ids. Attention keeps using HF's own cache: ``DynamicCache(config)``,
whose layers for ``sliding_attention`` are ``DynamicSlidingWindowLayer`` (only the last W-1 keys).
"""
from __future__ import annotations

from typing import Optional

from rosa_lightning.retrieval.streaming import RosaGenerationCache


class RosaGenerationMixin:
    """Adds ROSA state handling to ``GenerationMixin.generate`` (greedy and sampling search)."""

    def generate(self, inputs=None, generation_config=None, rosa_cache: Optional[RosaGenerationCache] = None,
                 **kwargs):
        """``GenerationMixin.generate`` with the ROSA state.

        Extra kwarg ``rosa_cache``: a ``RosaGenerationCache`` to use (it is reset first, and holds the
        final state afterwards, e.g. for ``nbytes()``); by default a new one per call.

        Without the KV cache (``use_cache=False``) every step re-runs the full forward, which needs no
        ROSA state. Beam search and assisted decoding are not supported (the automata cannot be
        reordered or rolled back).
        """
        if "rosa_token_ids" in kwargs:
            raise ValueError("generate() streams the token channel itself; do not pass rosa_token_ids")
        config = generation_config if generation_config is not None else self.generation_config
        use_cache = kwargs.get("use_cache", config.use_cache)
        if self.rosa_config.enabled and use_cache is not False:
            _check_supported(config, kwargs)
            if rosa_cache is None:
                rosa_cache = RosaGenerationCache.for_model(self)
            rosa_cache.reset()
            kwargs["rosa_cache"] = rosa_cache
        return super().generate(inputs, generation_config, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, attention_mask=None,
                                      inputs_embeds=None, is_first_iteration=False,
                                      rosa_cache: Optional[RosaGenerationCache] = None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, cache=cache, attention_mask=attention_mask,
            inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs)
        if rosa_cache is None:
            return model_inputs
        new_ids = model_inputs.get("input_ids")
        if new_ids is None:
            raise ValueError("ROSA generation needs input_ids; inputs_embeds prompts are not supported")
        if rosa_cache.length == 0 and cache is not None and cache.get_seq_length() > 0:
            raise ValueError("generate() was given a KV cache that already holds a prefix, but the ROSA state of "
                             "that prefix is not available; pass the whole prompt without a cache")
        token_ids = rosa_cache.begin(new_ids, attention_mask)
        model_inputs["rosa_cache"] = rosa_cache
        if token_ids is not None:
            model_inputs["rosa_token_ids"] = token_ids
        return model_inputs


def _check_supported(config, kwargs: dict) -> None:
    num_beams = kwargs.get("num_beams", config.num_beams)
    if num_beams is not None and num_beams > 1:
        raise NotImplementedError("beam search is not supported with ROSA (the per-row automata cannot be "
                                  "reordered between beams); use greedy or sampling")
    assisted = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")
    if any(kwargs.get(k) is not None for k in assisted) or getattr(config, "prompt_lookup_num_tokens", None):
        raise NotImplementedError("assisted decoding is not supported with ROSA (its state cannot be rolled back)")
