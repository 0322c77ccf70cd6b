"""``evaluate(cfg)`` and the Hydra entry point of ``eval.py`` (config: ``conf/eval.yaml``).

Order: model and tokenizer -> tasks (LongBench datasets, LongBench-E datasets, NIAH lengths) ->
generation of every sample not yet predicted -> official scores -> ``results.json``, ``results.md``,
the loggers. Predictions are appended to ``<out>/predictions/<task>.jsonl`` as they finish; with
``resume=<out dir of an earlier evaluation>`` the same files are continued, and the protocol settings
(model, max_length, chat template, NIAH seed and size) must equal the earlier ones.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from rosa_lightning.cli import finish_loggers, instantiate_group
from rosa_lightning.evaluation.records import hub_data_dir
from rosa_lightning.evaluation.results import markdown_table, summarize, write_results, write_text, flat_metrics
from rosa_lightning.evaluation.runner import PredictionFile, Throughput, run_samples
from rosa_lightning.evaluation.tasks import Task, longbench_task, niah_task
from rosa_lightning.generation.loading import ModelSource, active_rosa_layers, load_inference_model
from rosa_lightning.modeling.generate import SpeculativeConfig

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
PROTOCOL_FILE = "protocol.json"
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "longbench"


def evaluate(cfg: DictConfig, model: Optional[torch.nn.Module] = None, tokenizer: Any = None) -> dict:
    """Run the evaluation described by ``cfg``; returns the results dict (also written to the output dir)."""
    out_dir = Path(cfg.resume).expanduser() if cfg.get("resume") else Path(cfg.paths.output_dir)
    if cfg.get("resume") and not out_dir.is_dir():
        raise FileNotFoundError(f"resume={cfg.resume!r} is not an evaluation output directory")
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    source = ModelSource("given", "model passed to evaluate()", None)
    if model is None or tokenizer is None:
        model, tokenizer, source = load_inference_model(cfg)
    torch.manual_seed(int(cfg.seed))
    _check_protocol(out_dir, _protocol(cfg, source))
    tasks = build_tasks(cfg, tokenizer)  # every input is checked before the first sample is generated
    loggers = instantiate_group(cfg.get("logger"), "logger")
    results: dict[str, Any] = {"arm": cfg.get("arm") or arm_label(model), "model": source.description,
                               "longbench": {}, "longbench_e": {}, "niah": {}}
    total, start = Throughput(), time.perf_counter()
    speculative = SpeculativeConfig.coerce(_speculative_option(cfg))
    try:
        for task in tasks:
            preds = PredictionFile(out_dir / "predictions" / f"{task.name}.jsonl")
            total.add(run_samples(model, tokenizer, task.samples, preds, _row, batch_size=int(cfg.batch_size),
                                  max_batch_tokens=int(cfg.max_batch_tokens), desc=task.name,
                                  speculative=speculative))
            rows = [preds.rows[s.key] for s in task.samples]
            score = task.score(rows)
            results[task.kind][task.key] = score
            log.info("%s: %s", task.name, score)
        results["throughput"] = {**total.as_dict(), "wall_s": round(time.perf_counter() - start, 3)}
        summarize(results)
        write_results(out_dir, results)
        for lg in loggers:
            lg.log_metrics(flat_metrics(results), step=0)
    finally:
        finish_loggers(loggers)
    print(markdown_table(results), end="")
    tp = results["throughput"]
    print(f"{tp['samples']} samples in {tp['wall_s']:.1f} s; prefill {tp['prefill_tokens']} tokens at "
          f"{tp['prefill_tokens_per_s']} tok/s, decode {tp['decode_tokens']} tokens at {tp['decode_tokens_per_s']} tok/s")
    log.info("results: %s", out_dir / "results.json")
    return results


def _speculative_option(cfg: DictConfig) -> Any:
    """``generation.speculative`` as plain data (None when absent)."""
    node = (cfg.get("generation") or {}).get("speculative")
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_tasks(cfg: DictConfig, tokenizer: Any) -> list[Task]:
    """The configured tasks, in order: LongBench datasets, LongBench-E datasets, NIAH lengths."""
    t, lb = cfg.tasks, cfg.longbench
    names_e = list(t.get("longbench_e") or [])
    names = list(t.get("longbench") or [])
    data_dir = None
    if names or names_e:
        data_dir = _data_dir(cfg.data)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data.dir={str(data_dir)!r} is not a directory of LongBench jsonl files")
    common = dict(max_length=lb.max_length, chat_template=bool(lb.chat_template), limit=cfg.data.get("limit"))
    tasks = [longbench_task(tokenizer, data_dir, n, longbench_e=False, **common) for n in names]
    tasks += [longbench_task(tokenizer, data_dir, n, longbench_e=True, **common) for n in names_e]
    niah = cfg.niah
    tasks += [niah_task(tokenizer, int(n), num_samples=int(niah.num_samples), seed=int(niah.seed))
              for n in (t.get("niah") or [])]
    if not tasks:
        raise ValueError("no task chosen: set tasks.longbench, tasks.longbench_e or tasks.niah (or pick a "
                         "tasks=<name> config from conf/tasks/)")
    return tasks


def _data_dir(data: DictConfig) -> Path:
    """``data.dir``, the shipped fixture files (``data.fixtures``), or the hub's files (``data.hub_id``)."""
    if data.get("dir") and data.get("fixtures"):
        raise ValueError(f"set data.dir={data.dir!r} or data.fixtures=true, not both")
    if data.get("fixtures"):
        return FIXTURE_DIR
    return Path(data.dir).expanduser() if data.get("dir") else hub_data_dir(data.hub_id)


def arm_label(model: torch.nn.Module) -> str:
    """``global``, ``window`` or ``window+rosa`` (``+token`` with the token channel) from the model's layout."""
    rosa = model.rosa_config
    branch = bool(active_rosa_layers(model))
    if rosa.window is None and not branch:
        return "global"
    label = "window" if rosa.window is not None else "global"
    if branch:
        label += "+rosa"
    if rosa.enabled and rosa.token_channel != "off":
        label += "+token"
    return label


def _row(sample, prediction: str) -> dict:
    return {"_id": sample.key, "pred": prediction, **sample.meta}


def _protocol(cfg: DictConfig, source: ModelSource) -> dict:
    return {"model": source.description, "max_length": int(cfg.longbench.max_length),
            "chat_template": bool(cfg.longbench.chat_template), "niah_seed": int(cfg.niah.seed),
            "niah_num_samples": int(cfg.niah.num_samples), "data_limit": cfg.data.get("limit")}


def _check_protocol(out_dir: Path, protocol: dict) -> None:
    """Store the protocol of a new evaluation; on resume, refuse settings that differ from the stored ones."""
    path = out_dir / PROTOCOL_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (saved.get(k), v) for k, v in protocol.items() if saved.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: earlier {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"resume={str(out_dir)!r} was evaluated with other settings ({detail}); "
                             f"use a new output directory or the earlier settings")
        return
    write_text(path, json.dumps(protocol, indent=2) + "\n")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> Optional[float]:
    results = evaluate(cfg)
    return results.get("mean")
