"""Adapter checkpoints: only the ROSA parameters plus their ``RosaConfig`` (safetensors, atomic write)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import RosaConfig
from .model import rosa_named_parameters

ADAPTER_FILE = "rosa_adapter.safetensors"


def _resolve(path: Union[str, os.PathLike]) -> Path:
    p = Path(path)
    return p / ADAPTER_FILE if p.is_dir() or p.suffix != ".safetensors" else p


def save_adapter(model: torch.nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Write the ROSA parameters and config to ``path`` (a .safetensors file, or a directory).

    Written to a temporary file in the same directory, then renamed, so a crash never leaves a
    truncated adapter behind. Returns the file path.
    """
    tensors = {n: p.detach().cpu().contiguous() for n, p in rosa_named_parameters(model)}
    if not tensors:
        raise ValueError("model has no ROSA parameters to save (apply_rosa first)")
    return write_adapter_file(tensors, model.rosa_runtime.config, path)


def write_adapter_file(tensors: dict[str, torch.Tensor], config: RosaConfig,
                       path: Union[str, os.PathLike]) -> Path:
    """Atomically write ROSA ``tensors`` (names as in the model) and ``config`` as an adapter file."""
    target = _resolve(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {"rosa_config": json.dumps(config.to_dict())}
    fd, tmp = tempfile.mkstemp(prefix=".rosa_adapter.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_adapter_config(path: Union[str, os.PathLike]) -> RosaConfig:
    with safe_open(str(_resolve(path)), framework="pt") as f:
        return RosaConfig.from_dict(json.loads(f.metadata()["rosa_config"]))


def load_adapter(model: torch.nn.Module, path: Union[str, os.PathLike]) -> RosaConfig:
    """Copy saved ROSA parameters into ``model`` (which must have the same ROSA layout).

    Raises ValueError naming missing/unexpected keys or shape mismatches. Returns the saved config.
    """
    file = _resolve(path)
    saved_cfg = read_adapter_config(file)
    params = dict(rosa_named_parameters(model))
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
        missing, unexpected = sorted(set(params) - keys), sorted(keys - set(params))
        if missing or unexpected:
            raise ValueError(f"adapter {file} does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
        with torch.no_grad():
            for name, p in params.items():
                t = f.get_tensor(name)
                if t.shape != p.shape:
                    raise ValueError(f"adapter tensor {name} has shape {tuple(t.shape)}, model expects {tuple(p.shape)}")
                p.copy_(t.to(dtype=p.dtype, device=p.device))
    return saved_cfg
