"""HF Auto-class support: ``RosaQwen3Config`` (model_type ``rosa_qwen3``) and its registration.

A merged ROSA checkpoint (``save_pretrained`` of a ``RosaQwen3ForCausalLM``) stores
``"model_type": "rosa_qwen3"`` and the ROSA layout under ``"rosa"`` in ``config.json``. After
``import rosa_lightning``, ``AutoConfig`` / ``AutoModelForCausalLM.from_pretrained(<merged dir>)``
return the ROSA classes, so external harnesses that take a model path or object work unchanged.
"""
from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config

MODEL_TYPE = "rosa_qwen3"


class RosaQwen3Config(Qwen3Config):
    """``Qwen3Config`` whose ``rosa`` attribute (a ``RosaConfig`` dict) describes the ROSA branches."""

    model_type = MODEL_TYPE


def as_rosa_config(config: Qwen3Config) -> RosaQwen3Config:
    """A ``RosaQwen3Config`` with every field of ``config`` (the same object if it already is one)."""
    if isinstance(config, RosaQwen3Config):
        return config
    data = config.to_dict()
    data.pop("model_type", None)
    return RosaQwen3Config.from_dict(data)


def register_auto_classes() -> None:
    """Map ``rosa_qwen3`` to the ROSA config and causal-LM classes in transformers' Auto registries."""
    from .model import RosaQwen3ForCausalLM  # model.py imports this module (RosaQwen3Config): a cycle at import

    AutoConfig.register(MODEL_TYPE, RosaQwen3Config, exist_ok=True)
    AutoModelForCausalLM.register(RosaQwen3Config, RosaQwen3ForCausalLM, exist_ok=True)
