"""The model and tokenizer for inference (``generate.py``, ``eval.py``), from any of the places a model lives.

One entry, ``load_inference_model(cfg)``, reads these keys of a composed config:

- ``run_dir``: a training run directory. Its merged model (``<run>/model/``, a ``save_pretrained``
  directory with ``config.rosa``) is used when present; otherwise the run's final checkpoint
  (``<run>/checkpoints/last.ckpt``) with the model described by the run's own Hydra config
  (``<run>/.hydra/config.yaml``). A merged model directory itself is accepted too.
- ``adapter`` with ``model.backbone``: a base checkpoint plus a ROSA adapter, in the adapter's saved
  ROSA layout. Refused when the adapter says the backbone was trained too (stage B): the base
  checkpoint is then not the model that was trained.
- ``model.init_from`` with ``model.backbone``: a Lightning checkpoint or an adapter loaded into the
  model that ``model`` describes (as training does).
- only ``model``: a plain Qwen3 (path or hub id) with the window and ROSA settings of ``model.rosa``
  (``model.rosa.runtime.enabled=false`` for the windowed backbone alone, ``model.rosa.window=null`` as well
  for global attention).

The tokenizer comes from ``tokenizer`` when set, else from the model's directory (the merged model, or
the backbone of the run or of ``model.backbone``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from rosa_lightning.data.loading import backbone_reference, load_tokenizer
from rosa_lightning.lit_module import build_model, load_initial_weights
from rosa_lightning.modeling import (RosaConfig, RosaQwen3ForCausalLM, load_adapter, read_adapter_config,
                                     read_adapter_metadata)

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class ModelSource:
    """Where the model came from: ``kind`` (merged, checkpoint, adapter, init_from, backbone), the paths
    involved, and the reference the tokenizer is read from (None: the model has none)."""

    kind: str
    description: str
    tokenizer_ref: Optional[str]


def load_inference_model(cfg: DictConfig) -> tuple[torch.nn.Module, Any, ModelSource]:
    """The model (eval mode, on ``cfg.device``), its tokenizer (left padding, a pad token) and its source."""
    model, source = _build(cfg)
    model.eval().to(resolve_device(cfg.get("device")))
    log.info("model: %s", source.description)
    return model, _tokenizer(cfg, source), source


def load_run(run_dir: str, *, device: Optional[str] = "auto", torch_dtype: Optional[str] = None,
             tokenizer: Optional[str] = None) -> tuple[torch.nn.Module, Any]:
    """The model a training run trained (``<run>/model/`` or its last checkpoint) and its tokenizer, from Python.

    ``torch_dtype``: e.g. "bfloat16"; ``tokenizer``: a path or hub id replacing the run's own.
    """
    cfg = OmegaConf.create({"run_dir": str(run_dir), "device": device, "tokenizer": tokenizer,
                            "model": {"torch_dtype": torch_dtype}})
    model, tok, _ = load_inference_model(cfg)
    return model, tok


def resolve_device(device: Optional[str]) -> str:
    """``auto`` (or None): ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _build(cfg: DictConfig) -> tuple[torch.nn.Module, ModelSource]:
    m = cfg.model
    run_dir, adapter, init_from = cfg.get("run_dir"), cfg.get("adapter"), m.get("init_from")
    if run_dir:
        if adapter or init_from:
            raise ValueError("run_dir takes the model of a training run; do not combine it with "
                             f"adapter={adapter!r} or model.init_from={init_from!r}")
        return _from_run(Path(run_dir).expanduser(), m)
    if adapter and init_from:
        raise ValueError(f"set adapter={adapter!r} or model.init_from={init_from!r}, not both")
    if adapter:
        return _from_adapter(_existing(adapter, "adapter"), m)
    ref = backbone_reference(_plain(m.backbone))
    if ref is not None and not init_from and _is_merged_rosa(ref):
        log.info("model.backbone=%s is a merged ROSA model: its saved ROSA layout is used, not model.rosa", ref)
        return _from_merged(Path(ref).expanduser(), m)
    model = _build_backbone(m.backbone, _rosa_from_cfg(m.rosa), m)
    if init_from:
        load_initial_weights(model, str(_existing(init_from, "model.init_from")))
        return model, ModelSource("init_from", f"{ref or 'backbone config'} + weights of {init_from}", ref)
    if ref is not None and model.rosa_config.enabled:
        log.warning("the ROSA branches of %s are freshly initialised (they inject nothing until trained); pass "
                    "run_dir=, adapter= or model.init_from= to evaluate a trained ROSA model", ref)
    return model, ModelSource("backbone", f"{ref or 'backbone config'} ({_layout(model)})", ref)


def _from_run(run: Path, m: DictConfig) -> tuple[torch.nn.Module, ModelSource]:
    if not run.is_dir():
        raise FileNotFoundError(f"run_dir={str(run)!r} is not a directory")
    for merged in (run, run / "model"):
        if (merged / "config.json").is_file():
            return _from_merged(merged, m)
    ckpt, hydra_cfg = run / "checkpoints" / "last.ckpt", run / ".hydra" / "config.yaml"
    if ckpt.is_file() and hydra_cfg.is_file():
        trained = OmegaConf.load(hydra_cfg).model
        model = _build_backbone(trained.backbone, _rosa_from_cfg(trained.rosa), m, from_scratch=True)
        load_initial_weights(model, str(ckpt))
        return model, ModelSource("checkpoint", f"{ckpt} ({_layout(model)})", backbone_reference(_plain(trained.backbone)))
    raise FileNotFoundError(f"run_dir={str(run)!r} holds neither a merged model (model/config.json) nor a final "
                            f"checkpoint with its config (checkpoints/last.ckpt and .hydra/config.yaml)")


def _from_merged(path: Path, m: DictConfig) -> tuple[torch.nn.Module, ModelSource]:
    dtype = m.get("torch_dtype")
    model = RosaQwen3ForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype) if dtype else None,
                                                 attn_implementation=m.get("attn_implementation", "sdpa"))
    has_tok = any((path / f).is_file() for f in TOKENIZER_FILES)
    return model, ModelSource("merged", f"{path} ({_layout(model)})", str(path) if has_tok else None)


def _from_adapter(adapter: Path, m: DictConfig) -> tuple[torch.nn.Module, ModelSource]:
    meta = read_adapter_metadata(adapter)
    ref = backbone_reference(_plain(m.backbone))
    if meta.get("backbone_trained"):
        raise ValueError(f"adapter {str(adapter)!r} was trained together with its backbone (stage B), so "
                         f"model.backbone={ref!r} plus this adapter is not the trained model. Use "
                         f"run_dir=<run dir> (the run's merged model or last checkpoint) instead.")
    if meta.get("backbone_trained") is None:
        log.warning("adapter %s does not record whether its backbone was trained; assuming stage A "
                    "(frozen backbone)", adapter)
    if ref is None:
        log.warning("model.backbone is a model config (random weights): the adapter goes onto an untrained "
                    "backbone; set model.backbone=<base checkpoint dir>")
    rosa = read_adapter_config(adapter)
    model = _build_backbone(m.backbone, rosa, m)
    load_adapter(model, str(adapter))
    return model, ModelSource("adapter", f"{ref or 'backbone config'} + adapter {adapter} ({_layout(model)})", ref)


def _build_backbone(backbone: Any, rosa: RosaConfig, m: DictConfig, from_scratch: Optional[bool] = None):
    return build_model(backbone, rosa, torch_dtype=m.get("torch_dtype"),
                       attn_implementation=m.get("attn_implementation", "sdpa"),
                       from_scratch=bool(m.get("from_scratch", False)) if from_scratch is None else from_scratch)


def _tokenizer(cfg: DictConfig, source: ModelSource):
    ref, key = (cfg.tokenizer, "tokenizer") if cfg.get("tokenizer") else (source.tokenizer_ref, "model.backbone")
    if ref is None:
        raise ValueError(f"the model ({source.description}) comes without a tokenizer (a backbone built from a "
                         f"config, e.g. a run on synthetic token ids); set tokenizer=<dir or hub id>")
    local = Path(str(ref)).expanduser()
    if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"{key}={str(ref)!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                         f"set tokenizer=<dir or hub id>")
    tokenizer = load_tokenizer(ref, config_key=key)
    tokenizer.padding_side = "left"  # decoder-only batches: each row's prompt ends at the last column
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _rosa_from_cfg(node: Any) -> RosaConfig:
    data = _plain(node)
    data.pop("_target_", None)
    return RosaConfig.from_dict(data)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _existing(path: str, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{key}={path!r} does not exist")
    return p


def _is_merged_rosa(ref: str) -> bool:
    """True when ``ref`` is a local directory holding a merged ROSA model (``config.json`` with ``rosa``)."""
    config = Path(ref).expanduser() / "config.json"
    return config.is_file() and "rosa" in json.loads(config.read_text(encoding="utf-8"))


def active_rosa_layers(model: torch.nn.Module) -> list[int]:
    """Indices of the decoder layers whose ROSA branch runs (none when the branch is disabled)."""
    rosa = model.rosa_config
    return rosa.layers_for(model.config.num_hidden_layers) if rosa.enabled else []


def _layout(model: torch.nn.Module) -> str:
    rosa = model.rosa_config
    n = model.config.num_hidden_layers
    layers = active_rosa_layers(model)
    window = "global attention" if rosa.window is None else f"window {rosa.window}, {rosa.global_layers} global"
    branch = f"ROSA on {len(layers)}/{n} layers, bits {rosa.bits}" if layers else "no ROSA branch"
    return f"{window}; {branch}; token channel {rosa.token_channel}"
