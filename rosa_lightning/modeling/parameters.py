"""Which parameters are ROSA's, which a forward never reads, and stage A's freezing (docs/method.md §5.3)."""
from __future__ import annotations

from typing import Iterator

from torch import nn

from .layer import RosaQwen3DecoderLayer


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


def unused_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """ROSA parameters that no forward of this model reads: ``k_proj.weight`` of branches under ``qk_tied`` (K uses
    Q's weight), and every ROSA parameter while ``runtime.enabled`` is False. Training gives them no gradient and
    no optimizer state, which DDP and FSDP need (they refuse parameters that get no gradient)."""
    rosa = getattr(model, "rosa_config", None)
    if rosa is None:
        return []
    if not rosa.enabled:
        return list(rosa_named_parameters(model))
    if not rosa.inputs.qk_tied:
        return []
    prefix = {id(m): n for n, m in model.named_modules()}
    return [(f"{prefix[id(layer.rosa.k_proj)]}.weight", layer.rosa.k_proj.weight) for layer in rosa_layers(model)]


def rosa_layers(model: nn.Module) -> list[RosaQwen3DecoderLayer]:
    return [m for m in model.modules() if isinstance(m, RosaQwen3DecoderLayer)]
