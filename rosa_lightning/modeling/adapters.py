"""Adapter checkpoints: only the ROSA parameters plus their ``RosaConfig``, a checksum and whether the
backbone was trained too (safetensors metadata; atomic write, finite values only)."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rosa_lightning.fileio import atomic_write

from .config import RosaConfig
from .integrity import LAYOUT_FIELDS, check_finite, check_layout, tensor_checksum, verify_checksum
from .parameters import rosa_named_parameters

ADAPTER_FILE = "rosa_adapter.safetensors"


def _resolve(path: Union[str, os.PathLike]) -> Path:
    p = Path(path)
    return p / ADAPTER_FILE if p.is_dir() or p.suffix != ".safetensors" else p


def save_adapter(model: torch.nn.Module, path: Union[str, os.PathLike],
                 backbone_trained: Optional[bool] = None,
                 state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write the ROSA parameters and config to ``path`` (a .safetensors file, or a directory).

    ``backbone_trained``: whether the backbone's weights were trained together with the ROSA parameters
    (stage B); stored so that nobody pairs this adapter with the untrained backbone. Written to a
    temporary file in the same directory, then renamed, so a crash never leaves a truncated adapter
    behind; non-finite parameters are refused. Returns the file path. ``state_dict``: the tensors to write
    instead of the model's own (the whole state dict of a sharded model, ``sharding.gather_full_state_dict``).
    """
    tensors = dict(rosa_named_parameters(model))
    if state_dict is not None:
        missing = [n for n in tensors if n not in state_dict]
        if missing:
            raise KeyError(f"state_dict lacks the ROSA parameters {missing[:3]} ({len(missing)} in all)")
        tensors = {n: state_dict[n] for n in tensors}
    if not tensors:
        raise ValueError("model has no ROSA parameters to save (apply_rosa first)")
    return write_adapter_file(tensors, model.rosa_config, path, backbone_trained=backbone_trained)


def write_adapter_file(tensors: dict[str, torch.Tensor], config: RosaConfig, path: Union[str, os.PathLike],
                       backbone_trained: Optional[bool] = None) -> Path:
    """Atomically write ROSA ``tensors`` (names as in the model), ``config``, their checksum and
    ``backbone_trained`` (when known) as an adapter file. Raises ``NonFiniteError`` (nothing written)
    when a tensor holds NaN or inf."""
    target = _resolve(path)
    tensors = {n: t.detach().cpu().contiguous() for n, t in tensors.items()}
    check_finite(tensors.items(), f"adapter {target}")
    meta = {"rosa_config": json.dumps(config.to_dict()), "checksum": tensor_checksum(tensors.items())}
    if backbone_trained is not None:
        meta["backbone_trained"] = json.dumps(bool(backbone_trained))
    return atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_adapter_metadata(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """What an adapter file says about itself, without reading its tensors.

    Returns ``{"file": Path, "rosa_config": dict, "backbone_trained": bool or None (not recorded),
    "checksum": str or None (not recorded)}``. Raises ``ValueError`` naming the file when it is not a
    readable adapter.
    """
    file = _resolve(path)
    if not file.is_file():
        raise FileNotFoundError(f"adapter file {file} does not exist")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"adapter file {file} is not a readable safetensors file: {exc}") from exc
    if "rosa_config" not in meta:
        raise ValueError(f"{file} is not a ROSA adapter: its metadata has no 'rosa_config' (keys {sorted(meta)})")
    trained = meta.get("backbone_trained")
    return {"file": file, "rosa_config": json.loads(meta["rosa_config"]),
            "backbone_trained": None if trained is None else bool(json.loads(trained)),
            "checksum": meta.get("checksum")}


def read_adapter_config(path: Union[str, os.PathLike]) -> RosaConfig:
    return RosaConfig.from_dict(read_adapter_metadata(path)["rosa_config"])


def load_adapter(model: torch.nn.Module, path: Union[str, os.PathLike],
                 compare: tuple[str, ...] = LAYOUT_FIELDS) -> RosaConfig:
    """Copy saved ROSA parameters into ``model`` (which must have the same ROSA layout).

    Raises ValueError naming missing/unexpected keys, shape mismatches, the fields of ``compare`` where
    the file's ROSA config differs from the model's (``integrity.BRANCH_FIELDS`` lets the window differ),
    or a corrupted file (checksum); the model is left unchanged when anything is wrong. Returns the saved
    config.
    """
    meta = read_adapter_metadata(path)
    file = meta["file"]
    params = dict(rosa_named_parameters(model))
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
        missing, unexpected = sorted(set(params) - keys), sorted(keys - set(params))
        if missing or unexpected:
            raise ValueError(f"adapter {file} does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
        saved = {name: f.get_tensor(name) for name in sorted(keys)}
    check_layout(meta["rosa_config"], model.rosa_config, f"adapter {file}",
                 model.config.num_hidden_layers, compare)
    verify_checksum(saved.items(), meta["checksum"], f"adapter {file}")
    for name, t in saved.items():
        if t.shape != params[name].shape:
            raise ValueError(f"adapter tensor {name} has shape {tuple(t.shape)}, model expects {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(dtype=p.dtype, device=p.device))
    return RosaConfig.from_dict(meta["rosa_config"])
