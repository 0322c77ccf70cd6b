"""ROSA layers for Hugging Face Qwen3 (docs/method.md, docs/gradients.md, docs/pipeline.md).

Public API: ``RosaConfig``, ``build_rosa_model``, ``apply_rosa``, ``windowed_config``,
``apply_window``, ``RosaQwen3ForCausalLM``, parameter helpers (``rosa_parameters``,
``is_rosa_parameter``, ``freeze_backbone``), adapters (``save_adapter``, ``load_adapter``), the
batch retriever of a model (``attach_pipeline``; the pipeline itself is ``rosa_lightning.retrieval.RetrievalPipeline``)
and ``rosa_timing_stats``.
"""
from .adapters import load_adapter, read_adapter_config, read_adapter_metadata, save_adapter, write_adapter_file
from .convert import convert_published_state_dict
from .branch import RosaBranch, RosaLinear, RosaTiming
from .build import build_rosa_model
from .branch_inputs import InputOptions
from .config import RosaConfig, RuntimeOptions
from .counterfactual import GradOptions
from .layer import RosaQwen3DecoderLayer
from .model import RosaQwen3ForCausalLM, RosaQwen3Model, apply_rosa, attach_pipeline, rosa_timing_stats
from .parameters import (freeze_backbone, is_rosa_parameter, rosa_layers, rosa_named_parameters, rosa_parameters,
                         unused_parameters)
from .token_channel import RosaTokenChannel
from .windowing import apply_window, windowed_config

__all__ = [
    "GradOptions", "InputOptions", "RosaBranch", "RosaConfig", "RosaLinear", "RosaQwen3DecoderLayer",
    "RosaQwen3ForCausalLM", "RosaQwen3Model", "RosaTiming", "RosaTokenChannel", "RuntimeOptions", "apply_rosa",
    "apply_window", "attach_pipeline", "build_rosa_model", "convert_published_state_dict", "freeze_backbone",
    "is_rosa_parameter", "load_adapter", "read_adapter_config", "read_adapter_metadata", "rosa_layers",
    "rosa_named_parameters", "rosa_parameters", "rosa_timing_stats", "save_adapter", "unused_parameters",
    "windowed_config",
    "write_adapter_file",
]
