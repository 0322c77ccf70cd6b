"""``generate_text(cfg)`` and the Hydra entry point of ``generate.py`` (config: ``conf/generate.yaml``).

The model is a training run (``run_dir``: its merged model or final checkpoint), a base checkpoint plus
a ROSA ``adapter`` (in the adapter's saved layout), ``model.init_from``, or the ``model`` group alone;
``rosa_lightning.generation.loading`` resolves them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from rosa_lightning.generation.loading import load_inference_model

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def load_model_and_tokenizer(cfg: DictConfig) -> tuple[torch.nn.Module, Any]:
    """The model (eval mode, on ``cfg.device``) and its tokenizer; see ``generation.loading``."""
    model, tokenizer, _ = load_inference_model(cfg)
    return model, tokenizer


def generate_text(cfg: DictConfig, model: Optional[torch.nn.Module] = None, tokenizer: Any = None) -> list[str]:
    """Generate from ``cfg.prompt`` (a string or a list of strings, batched with left padding).

    Returns one string per prompt: the prompt followed by its completion when ``cfg.echo_prompt``,
    else the completion only (special tokens removed).
    """
    if model is None or tokenizer is None:
        model, tokenizer = load_model_and_tokenizer(cfg)
    prompts = cfg.prompt
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise ValueError(f"prompt must be a non-empty string or a list of them, got {cfg.prompt!r}")
    torch.manual_seed(int(cfg.seed))
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    if batch["input_ids"].shape[1] == 0:
        raise ValueError(f"prompt {cfg.prompt!r} encodes to no tokens with this tokenizer")
    kwargs = OmegaConf.to_container(cfg.generation, resolve=True) if cfg.get("generation") else {}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=int(cfg.max_new_tokens), tokenizer=tokenizer,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
    width = batch["input_ids"].shape[1]
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    if cfg.get("echo_prompt", True):
        texts = [p + t for p, t in zip(prompts, texts)]
    return texts


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    for text in generate_text(cfg):
        print(text)
