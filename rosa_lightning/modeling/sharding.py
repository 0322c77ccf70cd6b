"""Fully sharded data parallelism (torch FSDP2, ``fully_shard``) for a ROSA model.

One FSDP unit per decoder layer (plain or ROSA: a layer's ROSA parameters are sharded with it and all-gathered for
its forward and backward like the attention weights) and a root unit with the embeddings, the final norm and the
LM head (tied to the embeddings in Qwen3's small models, so they must share a unit). Parameters keep their names
(FSDP2 shards per parameter, as DTensors), so the ROSA prefix still drives stage-A freezing, the optimizer groups
and adapter export. ``final_hidden_states`` and ``chunked_loss`` (the memory-lean loss, which runs the LM head
itself) are registered as forward methods, so the root's parameters are gathered for them as for ``forward``.

Lightning runs this through ``ModelParallelStrategy`` (``trainer=fsdp_cpu``, ``trainer=fsdp2``):
``RosaLitModule.configure_model`` calls ``shard_model`` with a 1-D mesh over all ranks.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def _dtensor_type() -> Any:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support
        return None
    return DTensor


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (the model went through ``shard_model``)."""
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it, in the same order), else ``t``."""
    dtensor = _dtensor_type()
    return t.full_tensor() if dtensor is not None and isinstance(t, dtensor) else t


def shard_model(model: nn.Module, mesh: Any, reshard_after_forward: bool = True) -> nn.Module:
    """Apply ``fully_shard`` to every decoder layer of ``model`` (a ``RosaQwen3ForCausalLM`` or plain Qwen3 causal
    LM) and then to the model itself, over the 1-D device ``mesh``; returns ``model`` (sharded in place)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if getattr(mesh, "ndim", 1) != 1:
        raise ValueError(f"shard_model needs a 1-D (data-parallel) device mesh, got {mesh.ndim} dimensions "
                         f"{getattr(mesh, 'mesh_dim_names', None)}")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise TypeError(f"shard_model expects a causal LM with .model.layers (Qwen3), got {type(model).__name__}")
    if is_sharded(model):
        raise ValueError("the model is already sharded")
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    for method in ("final_hidden_states", "chunked_loss"):
        if hasattr(model, method):
            register_fsdp_forward_method(model, method)
    return model


def gather_full_state_dict(model: nn.Module) -> Mapping[str, torch.Tensor]:
    """The model's whole state dict on the CPU: for a sharded model a collective (every rank must call it) that
    returns the tensors on global rank 0 and an empty dict elsewhere; otherwise ``model.state_dict()``."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
