"""Incremental generation for ROSA models (docs/generation.md): the ROSA cache and HF ``generate()`` support.

Public API: ``RosaGenerationCache`` (per-layer streams, stored V symbols, token channel, padding
offsets), ``RosaGenerationMixin`` (``generate`` / ``prepare_inputs_for_generation`` of
``RosaQwen3ForCausalLM``), ``kv_cache_nbytes``.
"""
from .cache import RosaGenerationCache
from .memory import kv_cache_nbytes
from .mixin import RosaGenerationMixin

__all__ = ["RosaGenerationCache", "RosaGenerationMixin", "kv_cache_nbytes"]
