"""Configuration of the ROSA branch (docs/method.md §2, §3, §4.1; docs/gradients.md §4; docs/pipeline.md §3).

``RosaConfig`` is the single description of where and how ROSA is added to a Qwen3 model, validated once when it
is made and then passed through unchanged: the model, its layers and the branches read the same object. It is
nested by concern:

- placement (top level): ``bits``, ``rosa_layers``, ``global_layers``, ``window``, ``injection``, ``token_channel``;
- ``inputs``: what the Q/K/V projections read (``branch_inputs.InputOptions``);
- ``grad``: the counterfactual gradient's variant (``counterfactual.GradOptions``);
- ``runtime``: ``num_threads`` and ``enabled`` (``RuntimeOptions``), which change no parameter and no result.

It is mirrored by the Hydra group ``conf/model/rosa`` (with the subgroups ``inputs`` and ``grad``) and stored inside
the HF config (``config.rosa``) so that a merged ``save_pretrained`` checkpoint rebuilds the same model. Files
written before the nesting stored the options flat (``kv_shift``, ``cf_field``, ...); ``from_dict`` reads both.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from .branch_inputs import InputOptions
from .counterfactual import GradOptions

INJECTIONS = ("post_attn", "post_mlp", "pre_attn")
TOKEN_CHANNELS = ("off", "shared", "own")

# The flat keys of the layout used before the nesting, and where each one lives now.
LEGACY_KEYS = {
    "cf_field": ("grad", "field"), "grad_mode": ("grad", "mode"), "relax_beta": ("grad", "relax_beta"),
    "k_credit": ("grad", "k_credit"), "cf_e0_term": ("grad", "e0_term"),
    "kv_shift": ("inputs", "kv_shift"), "qk_tied": ("inputs", "qk_tied"), "center_u": ("inputs", "center_u"),
    "num_threads": ("runtime", "num_threads"), "enabled": ("runtime", "enabled"),
}


@dataclass(frozen=True)
class RuntimeOptions:
    """Settings that change neither the parameters nor the results.

    Attributes:
        num_threads: retrieval kernel threads: "auto" (the budget of ``retrieval.budget``) or an int >= 1.
        enabled: False skips every ROSA branch and the token channel (logits equal the windowed backbone); the
            parameters stay in the model.
    """

    num_threads: Union[str, int] = "auto"
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.num_threads != "auto" and not (_is_int(self.num_threads) and self.num_threads >= 1):
            raise ValueError(f"RosaConfig.runtime.num_threads must be 'auto' or an int >= 1, got {self.num_threads!r}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"RosaConfig.runtime.enabled must be a bool, got {self.enabled!r}")


_SECTIONS = {"inputs": InputOptions, "grad": GradOptions, "runtime": RuntimeOptions}


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
        injection: "post_attn" (branch parallel to attention, added to ``x + attn``; docs/method.md §2.4),
            "post_mlp" (added to the layer's output, after the MLP: the retrieval overlaps the whole layer) or
            "pre_attn" (branch output added to the layer input before attention reads it).
        token_channel: "off", "shared" (W_tok on the model's input-embedding table) or "own"
            (a separate zero-initialised table), docs/method.md §3.
        inputs: ``InputOptions`` (``kv_shift``, ``qk_tied``, ``center_u``; published: all off).
        grad: ``GradOptions`` (``field``, ``mode``, ``k_credit``, ``e0_term``, ``relax_beta``; published: defaults).
        runtime: ``RuntimeOptions`` (``num_threads``, ``enabled``).

    ``inputs``, ``grad`` and ``runtime`` may be given as mappings (Hydra, JSON); they are converted here.
    ``enabled`` is the one field meant to be switched on a live model (``model.rosa_config.enabled = False``
    compares the same weights with and without ROSA); it is a property over ``runtime``.
    """

    bits: int = 4
    rosa_layers: Optional[list[int]] = None
    global_layers: int = 1
    window: Optional[int] = 2048
    injection: str = "post_attn"
    token_channel: str = "off"
    inputs: InputOptions = field(default_factory=InputOptions)
    grad: GradOptions = field(default_factory=GradOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

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
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = _section(cls, name, value)
            elif not isinstance(value, cls):
                raise ValueError(f"RosaConfig.{name} must be a {cls.__name__} or a mapping of its fields, "
                                 f"got {type(value).__name__}")
            object.__setattr__(self, name, value)

    @property
    def enabled(self) -> bool:
        return self.runtime.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.runtime = dataclasses.replace(self.runtime, enabled=value)

    def layers_for(self, num_layers: int) -> list[int]:
        """The ROSA layer indices for a model with ``num_layers`` decoder layers."""
        if self.rosa_layers is None:
            return list(range(min(self.global_layers, num_layers), num_layers))
        bad = [i for i in self.rosa_layers if i >= num_layers]
        if bad:
            raise ValueError(f"RosaConfig.rosa_layers {bad} out of range for a model with {num_layers} layers")
        return list(self.rosa_layers)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-ready): the placement fields plus ``inputs``, ``grad``, ``runtime``."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """One level: placement fields by name, section fields as ``section.field`` (for comparisons and logs)."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RosaConfig":
        """Build from a plain mapping (``config.rosa``, an adapter's metadata, an OmegaConf container).

        Reads the nested layout and the flat one of older files (``LEGACY_KEYS``); unknown keys and a key given
        both ways raise.
        """
        data = dict(data)
        data.pop("_target_", None)
        nested: dict[str, dict] = {}
        for old, (section, name) in LEGACY_KEYS.items():
            if old in data:
                nested.setdefault(section, {})[name] = data.pop(old)
        for section, values in nested.items():
            given = dict(data.get(section) or {})
            both = sorted(set(given) & set(values))
            if both:
                raise ValueError(f"RosaConfig: {section}.{both[0]} is given both nested and as the older flat key")
            data[section] = {**given, **values}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown RosaConfig keys {sorted(unknown)}; expected a subset of {sorted(names)} "
                             f"(or the older flat keys {sorted(LEGACY_KEYS)})")
        return cls(**data)


def coerce_rosa_config(value: Union[RosaConfig, Mapping[str, Any], None]) -> RosaConfig:
    """``value`` as a ``RosaConfig`` (None = the defaults; a mapping through ``from_dict``)."""
    if value is None:
        return RosaConfig()
    if isinstance(value, RosaConfig):
        return value
    if isinstance(value, Mapping):
        return RosaConfig.from_dict(value)
    raise TypeError(f"a ROSA configuration must be a RosaConfig or a mapping, got {type(value).__name__}")


def _section(cls, name: str, values: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown RosaConfig.{name} keys {sorted(unknown)}; expected a subset of {sorted(names)}")
    return cls(**dict(values))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"RosaConfig.{name} must be one of {choices}, got {value!r}")
