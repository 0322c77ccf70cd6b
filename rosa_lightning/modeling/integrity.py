"""Checks that saved weights are finite, unchanged since they were written, and fit the model's ROSA layout.

Used by the adapter files (``adapters.py``) and the Lightning checkpoints (``callbacks/checkpoint_io.py``):

- ``check_finite``: refuse to write weights holding NaN/inf (the previous file is kept).
- ``tensor_checksum``: SHA-256 over the names, dtypes, shapes and bytes of a set of tensors, stored at
  write time and compared at load time, so flipped bytes are found instead of trained on.
- ``check_layout``: the fields of ``RosaConfig`` that define the forward pass (a model built with another
  value computes something else with the same parameter shapes) must agree between a file and a model.
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch

from .config import LEGACY_KEYS, RosaConfig

# Fields that change what the same parameters compute (names as in ``RosaConfig.flat``). The gradient options
# (``grad.*``) and the runtime settings (``runtime.*``) may differ between a file and a model.
# BRANCH_FIELDS give the ROSA parameters their meaning; the attention fields may change when a file is only
# a starting point (model.init_from): the published protocol converts a global model to the window.
BRANCH_FIELDS = ("bits", "rosa_layers", "injection", "token_channel", "inputs.kv_shift", "inputs.qk_tied",
                 "inputs.center_u")
LAYOUT_FIELDS = BRANCH_FIELDS[:2] + ("global_layers", "window") + BRANCH_FIELDS[2:]
_DEFAULTS = RosaConfig().flat()


def _flat_fields(cfg: Mapping) -> dict[str, Any]:
    """A stored ROSA config (nested, or the older flat layout) as ``RosaConfig.flat`` names; absent fields stay
    absent (they count as their defaults)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif key in LEGACY_KEYS:
            out[".".join(LEGACY_KEYS[key])] = value
        else:
            out[key] = value
    return out


class NonFiniteError(ValueError):
    """Weights holding NaN or inf, refused before they are written."""


class ChecksumError(ValueError):
    """A file whose tensors differ from what was written (corrupted bytes)."""


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise ``NonFiniteError`` naming ``what`` and the first offending tensors when any float tensor
    holds NaN or inf."""
    bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(f"refusing to write {what}: {len(bad)} tensor(s) hold NaN or inf values "
                             f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); the previous file, if any, "
                             f"is kept")


def tensor_checksum(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hex SHA-256 over (name, dtype, shape, bytes) of each tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name, t in sorted(tensors, key=lambda item: item[0]):
        t = t.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


def verify_checksum(tensors: Iterable[tuple[str, torch.Tensor]], expected: Optional[str], file: Any) -> None:
    """Raise ``ChecksumError`` naming ``file`` when the tensors' checksum is not ``expected``; warn once when
    the file predates checksums (``expected`` None)."""
    if expected is None:
        warnings.warn(f"{file} holds no content checksum (written by an older version); it is loaded unverified",
                      UserWarning, stacklevel=3)
        return
    got = tensor_checksum(tensors)
    if got != expected:
        raise ChecksumError(f"{file} is corrupted: the checksum of its tensors is {got[:16]}..., the file was "
                            f"written with {expected[:16]}...; restore it from a copy or use an earlier checkpoint")


def _layers(cfg: Mapping, num_layers: Optional[int]) -> Any:
    if cfg.get("rosa_layers") is not None:
        return sorted(cfg["rosa_layers"])
    if num_layers is None:
        return None
    return list(range(min(int(cfg.get("global_layers", _DEFAULTS["global_layers"])), num_layers), num_layers))


def layout_differences(saved: Mapping, current: Mapping, num_layers: Optional[int] = None,
                       fields: tuple[str, ...] = LAYOUT_FIELDS) -> dict[str, tuple]:
    """{field: (saved value, current value)} over ``fields``.

    A field missing from ``saved`` (written before the field existed) counts as its default, which is
    what older versions did. ``rosa_layers`` is compared as the resolved list of layers when
    ``num_layers`` is known (None and an explicit list can describe the same layers).
    """
    out = {}
    saved, current = _flat_fields(saved), _flat_fields(current)
    for name in fields:
        a, b = saved.get(name, _DEFAULTS[name]), current.get(name, _DEFAULTS[name])
        if name == "rosa_layers":
            a, b = _layers(saved, num_layers), _layers(current, num_layers)
        if a != b:
            out[name] = (a, b)
    return out


def check_layout(saved: Optional[Mapping], current: RosaConfig, source: Any, num_layers: Optional[int] = None,
                 fields: tuple[str, ...] = LAYOUT_FIELDS) -> None:
    """Raise ``ValueError`` naming each differing field of ``fields`` (saved vs current) of ``source``; warn
    once when ``source`` stores no ROSA configuration (an older file)."""
    if saved is None:
        warnings.warn(f"{source} stores no ROSA configuration (written by an older version); its layout is not "
                      f"checked against the model", UserWarning, stacklevel=3)
        return
    diff = layout_differences(saved, current.to_dict(), num_layers, fields)
    if diff:
        fields = "; ".join(f"{k}: saved {a!r}, current {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
        raise ValueError(f"{source} was trained with a different ROSA configuration ({fields}); set model.rosa "
                         f"to the saved values or start from a matching file")
