"""Converter for checkpoints written by the published ROSA-Tuning code (docs/method.md §2.6).

The published code names the per-layer ROSA tensors ``rosa_q_proj``, ``rosa_k_proj``,
``rosa_v_proj``, ``rosa_out`` (each ``.weight``), ``rosa_e0``, ``rosa_e1`` and an unused
``rosa_alpha``. This project keeps them under a ``rosa`` submodule of the decoder layer:
``model.layers.{i}.rosa.{q_proj,k_proj,v_proj,out_proj}.weight`` and ``model.layers.{i}.rosa.{e0,e1}``.
The alpha vector is dropped (the parallel placement never uses it).

Usage::

    python -m rosa_lightning.modeling.convert published.safetensors adapter.safetensors --bits 4
"""
from __future__ import annotations

import argparse
import re
from typing import Mapping

import torch
from safetensors.torch import load_file

from .adapters import write_adapter_file
from .config import RosaConfig

_PUBLISHED = re.compile(r"^(?P<prefix>.*\blayers\.\d+\.)rosa_(?P<name>q_proj|k_proj|v_proj|out|e0|e1|alpha)"
                        r"(?P<suffix>\.weight)?$")
_NEW_NAME = {"q_proj": "q_proj.weight", "k_proj": "k_proj.weight", "v_proj": "v_proj.weight",
             "out": "out_proj.weight", "e0": "e0", "e1": "e1"}


def convert_published_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename published ROSA keys to this project's names; other keys pass through unchanged.

    Raises:
        ValueError: a key looks like a published ROSA tensor but has an unexpected form (e.g.
            ``rosa_e0.weight``), or two keys map to the same new name.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        m = _PUBLISHED.match(key)
        if m is None:
            if re.search(r"\blayers\.\d+\.rosa_", key):
                raise ValueError(f"unrecognised published ROSA key {key!r}; expected layers.<i>.rosa_"
                                 f"{{q_proj,k_proj,v_proj,out}}.weight, rosa_e0, rosa_e1 or rosa_alpha")
            new_key = key
        else:
            name, has_weight = m.group("name"), m.group("suffix") is not None
            if name == "alpha":
                continue
            if has_weight != (name in ("q_proj", "k_proj", "v_proj", "out")):
                raise ValueError(f"published ROSA key {key!r}: projections end in .weight, e0/e1 do not")
            new_key = f"{m.group('prefix')}rosa.{_NEW_NAME[name]}"
        if new_key in out:
            raise ValueError(f"two checkpoint keys map to {new_key!r}")
        out[new_key] = tensor
    return out


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Convert a published ROSA-Tuning checkpoint's ROSA tensors "
                                     "into a rosa_lightning adapter file.")
    parser.add_argument("src", help="published checkpoint (.safetensors)")
    parser.add_argument("dst", help="adapter file to write (.safetensors) or directory")
    parser.add_argument("--bits", type=int, default=4, help="bits per route M used by the checkpoint")
    parser.add_argument("--window", type=int, default=2048, help="attention window used in training")
    args = parser.parse_args(argv)
    converted = convert_published_state_dict(load_file(args.src))
    rosa = {k: v for k, v in converted.items() if ".rosa." in k}
    if not rosa:
        raise SystemExit(f"{args.src} holds no published ROSA tensors (layers.<i>.rosa_*)")
    path = write_adapter_file(rosa, RosaConfig(bits=args.bits, window=args.window), args.dst)
    print(f"wrote {len(rosa)} ROSA tensors to {path}")


if __name__ == "__main__":
    _main()
