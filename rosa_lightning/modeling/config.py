"""Configuration of the ROSA branch (docs/method.md §2, §3, §4.1; docs/gradients.md §4; docs/pipeline.md §3).

``RosaConfig`` is the single description of where and how ROSA is added to a Qwen3 model. It is
mirrored by the Hydra group ``conf/model/rosa`` and stored inside the HF config (``config.rosa``)
so that a merged ``save_pretrained`` checkpoint rebuilds the same model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .counterfactual import GRAD_MODES, K_CREDITS, check_positive_number

INJECTIONS = ("post_attn", "pre_attn")
TOKEN_CHANNELS = ("off", "shared", "own")
CF_FIELDS = ("soft", "hard")
CENTER_U = ("off", "causal_mean")


@dataclass
class RosaConfig:
    """Where ROSA branches go and how they behave.

    Attributes:
        bits: M, bits per route (1..8); the hidden size must be divisible by it.
        rosa_layers: decoder-layer indices that get a ROSA branch. None = every layer at index
            >= ``global_layers`` (published default: layers 1..L-1).
        global_layers: number of leading layers that keep full causal attention; the others use
            the sliding window.
        window: attention window W (keys t-W+1..t), None = no sliding window at all.
        injection: "post_attn" (branch parallel to attention, added to ``x + attn``; docs/method.md §2.4) or
            "pre_attn" (branch output added to the layer input before attention reads it).
        token_channel: "off", "shared" (W_tok on the model's input-embedding table) or "own"
            (a separate zero-initialised table), docs/method.md §3.
        num_threads: retrieval kernel threads, "auto" = docs/pipeline.md §3 budget, or a positive int.
        cf_field: value field of the counterfactual gradient: "soft" (sigmoid(zv), default) or
            "hard" (1[zv > 0]).
        grad_mode: named counterfactual-gradient variant; "published" is docs/gradients.md §2 exactly, "relaxed" takes the
            Q and K gradients from a soft single-symbol match over all earlier positions (O(T^2), study scale;
            ``modeling/relaxed.py``).
        relax_beta: inverse temperature of the "relaxed" soft match (> 0).
        k_credit: K credit of the counterfactual gradient: "reference" (published, the successor
            run's start, docs/gradients.md §A3) or "matched" (the matched run's start).
        cf_e0_term: gradient option (off = published, docs/gradients.md §A1): count a counterfactual destination's
            output whole (e0 + Delta*F), so flips that change validity also carry the e0 part.
        kv_shift: learning option (off = published): the K and V projections read the previous position's
            input u[t-1] (zeros at position 0), Q reads u[t]; see ``branch_inputs``.
        qk_tied: learning option (off = published): K is computed with Q's weight; ``k_proj.weight`` is kept
            in the state dict but unused. Only useful with ``kv_shift`` (Q == K retrieves nothing, docs/retrieval.md §R4).
        center_u: learning option: "off" (published) or "causal_mean" (Q/K/V read u[t] - mean(u[0..t])).
        enabled: False leaves the model structurally patched but skips the branch entirely
            (logits equal the windowed backbone).
    """

    bits: int = 4
    rosa_layers: Optional[list[int]] = None
    global_layers: int = 1
    window: Optional[int] = 2048
    injection: str = "post_attn"
    token_channel: str = "off"
    num_threads: Union[str, int] = "auto"
    cf_field: str = "soft"
    grad_mode: str = "published"
    relax_beta: float = 1.0
    k_credit: str = "reference"
    cf_e0_term: bool = False
    kv_shift: bool = False
    qk_tied: bool = False
    center_u: str = "off"
    enabled: bool = True

    def __post_init__(self) -> None:
        # bool is an int subclass: bits=true would silently mean 1
        if not _is_int(self.bits) or not 1 <= self.bits <= 8:
            raise ValueError(f"RosaConfig.bits must be an int in 1..8 (symbols are uint8), got {self.bits!r}")
        if self.rosa_layers is not None:
            layers = list(self.rosa_layers)
            if any((not _is_int(i)) or i < 0 for i in layers):
                raise ValueError(f"RosaConfig.rosa_layers must be non-negative ints or None, got {self.rosa_layers!r}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"RosaConfig.rosa_layers has duplicates: {self.rosa_layers!r}")
            self.rosa_layers = sorted(layers)
        if not _is_int(self.global_layers) or self.global_layers < 0:
            raise ValueError(f"RosaConfig.global_layers must be an int >= 0, got {self.global_layers!r}")
        if self.window is not None and (not _is_int(self.window) or self.window < 1):
            raise ValueError(f"RosaConfig.window must be a positive int or None, got {self.window!r}")
        _check_choice("injection", self.injection, INJECTIONS)
        _check_choice("token_channel", self.token_channel, TOKEN_CHANNELS)
        _check_choice("cf_field", self.cf_field, CF_FIELDS)
        _check_choice("grad_mode", self.grad_mode, GRAD_MODES)
        check_positive_number("RosaConfig.relax_beta", self.relax_beta)
        _check_choice("k_credit", self.k_credit, K_CREDITS)
        _check_choice("center_u", self.center_u, CENTER_U)
        for name in ("cf_e0_term", "kv_shift", "qk_tied"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RosaConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.num_threads != "auto" and not (_is_int(self.num_threads) and self.num_threads >= 1):
            raise ValueError(f"RosaConfig.num_threads must be 'auto' or an int >= 1, got {self.num_threads!r}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"RosaConfig.enabled must be a bool, got {self.enabled!r}")

    def layers_for(self, num_layers: int) -> list[int]:
        """The ROSA layer indices for a model with ``num_layers`` decoder layers."""
        if self.rosa_layers is None:
            return list(range(min(self.global_layers, num_layers), num_layers))
        bad = [i for i in self.rosa_layers if i >= num_layers]
        if bad:
            raise ValueError(f"RosaConfig.rosa_layers {bad} out of range for a model with {num_layers} layers")
        return list(self.rosa_layers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RosaConfig":
        """Build from a plain dict (e.g. ``config.rosa`` or an OmegaConf container); unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown RosaConfig keys {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**dict(data))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"RosaConfig.{name} must be one of {choices}, got {value!r}")
