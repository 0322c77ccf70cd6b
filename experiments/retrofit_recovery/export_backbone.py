"""Write a trained global-attention run as a plain Qwen3 checkpoint directory (config, safetensors, tokenizer).

A run of ``experiment=pretrain_code`` trains a ``RosaQwen3ForCausalLM`` whose branches are skipped; its merged
``model/`` export is a ``rosa_qwen3`` directory with ROSA weights in it. The retrofit starts from the backbone
alone, as it would from a hub checkpoint, so this writes the non-ROSA weights into a ``Qwen3ForCausalLM`` built
from the run's backbone config, with the EOS / pad ids of the run's tokenizer::

    python -m experiments.retrofit_recovery.export_backbone logs/pretrain_code/runs/<time> <out dir>

The result loads as ``model.backbone=<out dir>`` (and with ``AutoModelForCausalLM.from_pretrained``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch


def export_backbone(module: Any, tokenizer: Any, out_dir: Path) -> Path:
    """Save ``module.model`` without its ROSA parameters as a ``Qwen3ForCausalLM`` (plus ``tokenizer``)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from rosa_lightning.callbacks.adapter import save_merged_model
    from rosa_lightning.modeling import is_rosa_parameter

    fields = dict(module.hparams["backbone"])
    eos = int(tokenizer.eos_token_id)
    config = Qwen3Config(**fields, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    plain = Qwen3ForCausalLM(config)
    state = {k: v for k, v in module.model.state_dict().items() if not is_rosa_parameter(k)}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export_backbone: weights do not match Qwen3: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    plain.generation_config.eos_token_id = eos
    plain.generation_config.pad_token_id = eos
    plain.generation_config.bos_token_id = eos
    return save_merged_model(plain, str(out_dir), tokenizer)


def load_run_module(run_dir: Path, overrides: dict | None = None):
    """The ``RosaLitModule`` of a finished run: its Hydra config and ``checkpoints/last.ckpt``; ``overrides``
    (dotted key -> value, e.g. ``{"model.rosa.window": 64}``) change the config before the module is built."""
    import hydra
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    for where in (run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.ckpt"):
        if not where.is_file():
            raise FileNotFoundError(f"load_run_module: {run_dir} is not a finished train.py run folder "
                                    f"(expected {where})")
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    # ``paths`` reads Hydra's runtime config (${hydra:runtime.cwd}), which exists only inside a Hydra app: fill it
    # from the run's own record of it (hydra.yaml) or, without one, from this process.
    saved = run_dir / ".hydra" / "hydra.yaml"
    runtime = OmegaConf.load(saved).hydra.runtime if saved.is_file() else None
    cwd = str(runtime.cwd) if runtime is not None else str(Path.cwd())
    if "paths" in cfg:
        cfg.paths.root_dir = cwd
        cfg.paths.work_dir = cwd
        cfg.paths.output_dir = str(run_dir.resolve())
    for key, value in (overrides or {}).items():
        if OmegaConf.select(cfg, key, default=KeyError) is KeyError:
            raise KeyError(f"load_run_module: the run's config has no key {key!r}")
        OmegaConf.update(cfg, key, value)
    module = hydra.utils.instantiate(cfg.model)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    module.load_state_dict(ckpt["state_dict"])
    return module, cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished experiment=pretrain_code run folder")
    p.add_argument("out_dir", type=Path, help="where the Qwen3 directory is written")
    args = p.parse_args(argv)
    import hydra

    module, cfg = load_run_module(args.run_dir)
    source = hydra.utils.instantiate(cfg.data.source)
    print(export_backbone(module, source.tokenizer, args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
