"""``generate_text(cfg)`` and the Hydra entry point of ``generate.py`` (config: ``conf/generate.yaml``).

The model is described by the same ``model`` group as training (backbone, dtype, attention
implementation). With an ``adapter``, the ROSA layout stored in the adapter (bits, layers, window,
token channel) is used, so the model matches what was trained; without one, ``model.rosa`` is used
(the ROSA init, i.e. the windowed backbone).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _rosa_config(cfg: DictConfig):
    from rosa_lightning.modeling import RosaConfig, read_adapter_config

    if cfg.get("adapter"):
        rosa = read_adapter_config(_existing(cfg.adapter, "adapter"))
        log.info("ROSA layout from the adapter: %s", rosa)
        return rosa
    node = OmegaConf.to_container(cfg.model.rosa, resolve=True)
    node.pop("_target_", None)
    return RosaConfig.from_dict(node)


def _existing(path: str, key: str) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{key}={path!r} does not exist")
    return str(p)


def load_model_and_tokenizer(cfg: DictConfig) -> tuple[torch.nn.Module, Any]:
    """The ROSA model (base checkpoint + adapter, eval mode, on ``cfg.device``) and its tokenizer."""
    from rosa_lightning.data.loading import load_tokenizer
    from rosa_lightning.lit_module import build_model
    from rosa_lightning.modeling import load_adapter

    m = cfg.model
    model = build_model(m.backbone, _rosa_config(cfg), torch_dtype=m.get("torch_dtype"),
                        attn_implementation=m.get("attn_implementation", "sdpa"),
                        from_scratch=bool(m.get("from_scratch", False)))
    if cfg.get("adapter"):
        load_adapter(model, _existing(cfg.adapter, "adapter"))
    model.eval().to(cfg.get("device", "cpu"))
    tokenizer = load_tokenizer(cfg.tokenizer if cfg.get("tokenizer") else m.backbone,
                               config_key="tokenizer" if cfg.get("tokenizer") else "model.backbone")
    tokenizer.padding_side = "left"  # decoder-only batches: each row's prompt ends at the last column
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
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
