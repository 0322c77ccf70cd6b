"""Retrofit recovery: does ROSA bring back the long-context ability a pretrained global-attention model loses when
it is converted to a sliding window?

    python -m experiments.retrofit_recovery.run            # the full study (about 60 to 80 min on 2 CPU cores)
    python -m experiments.retrofit_recovery.run --smoke    # seconds-long pipeline check (tests/studies)

1. ``experiment=pretrain_code_copy``: a small Qwen3 with global attention trained from scratch on code (stdlib and
   site-packages sources, most rows ending in a repeated block of code, of random digests or of token ids) after a
   copy warm-up on repeated random token ids, on a row-length ladder (``LADDER``: 128-, 256- then 512-token rows,
   then 512-token rows with needles, each rung from the one before), exported as a plain Qwen3 directory
   (``export_backbone``).
2. Held-out tasks from the test split of the same corpus, in LongBench's layout (``lcc.jsonl``,
   ``repobench-p.jsonl``, ``rosa_lightning.evaluation.code_tasks``).
3. The arms, each ``conf/experiment/retrofit_<arm>.yaml`` with ``model.backbone=<exported dir>``: global and the
   window conversions are evaluated as they are; the ROSA arms and the token channel train in stage A; stage B
   continues the better stage-A arm (lower final validation loss) with the backbone unfrozen.
4. Every arm through the evaluation's Python API (``rosa_lightning.evaluation.cli.evaluate``, what ``eval.py``
   runs) with ``tasks=retrofit`` (lcc and repobench-p scored with ``code_sim_score``, RULER niah_single_1 at L, 2L
   and 4L), and next-token perplexity by position on held-out files.

Everything a run writes goes under ``--logs`` (default ``logs/retrofit_recovery/``); a finished step (pretraining,
export, task files, an arm's training or evaluation) is reused when the command runs again, so a killed study
continues where it stopped. Results (``results.json``, ``results.md``, plots) go to this folder or ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
from pathlib import Path

import hydra
import numpy as np
import torch
from torch.utils.data import Dataset

from experiments.harness import runs
from experiments.harness.evaluate import loss_by_position
from experiments.harness.report import (binned_perplexity, line_panels, markdown_table, perplexity, write_json,
                                       write_results_block)
from experiments.harness.runs import check_choices, compose_config, stopwatch
from experiments.retrofit_recovery.export_backbone import export_backbone
from rosa_lightning.data.long_range_mix import DIGEST_FORMATS, pack_rows
from rosa_lightning.data.stdlib_corpus import TokenChunkDataset
from rosa_lightning.evaluation.compare import MIN_GAP, gap_recovered

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

ARMS = ["global", "window", "window_all", "window_tuned", "rosa_published", "rosa_recommended", "rosa_teacher",
        "stage_b", "token"]
TRAINED = {"window_tuned", "rosa_published", "rosa_recommended", "rosa_teacher", "stage_b", "token"}
STAGE_A = ("rosa_published", "rosa_recommended", "rosa_teacher")  # stage B starts from the best of these
LABELS = {"global": "global", "window": "window (layer 0 global)", "window_all": "window (all layers)",
          "window_tuned": "window + stage-B training, no ROSA",
          "rosa_published": "window + ROSA (published)", "rosa_recommended": "window + ROSA (recommended)",
          "rosa_teacher": "window + ROSA (recommended + hash teacher)",
          "stage_b": "window + ROSA, stage B", "token": "token channel"}
TABLE_ARMS = ["global", "window", "rosa_published", "rosa_recommended", "rosa_teacher", "stage_b", "token",
              "window_tuned", "window_all"]
BIN = 32  # tokens per bin of the perplexity-by-position curve
# The pretraining: a row-length ladder of experiment=pretrain_code_copy (README, "Probes"): content copying forms on
# short rows and carries over as the rows double; 4,096 tokens per step at every rung.
# Then three rungs at 512 that add RULER-style needles to the mix (niah 2, then 4, beside repeat, digest and
# copy_ids 1), on which the global model learns to find the needle's value (README, "A backbone that finds the
# needle").
# Before all of them a warm-up rung of pure ``copy_ids`` rows (random token-id blocks repeated; README, "A copy
# warm-up"), on which content copying (induction) forms within a few hundred steps; ``copy_ids`` stays in the mix
# of every later rung so that the circuit is kept while the code and the needles are learned.
COPY_WARMUP = {"seq_len": 128, "batch": 32, "steps": 1000,
               "overrides": ["data.source.kinds.copy_ids=1", "data.source.kinds.repeat=0",
                             "data.source.kinds.digest=0", "trainer.val_check_interval=100",
                             "callbacks.model_checkpoint.every_n_train_steps=500"]}
KEEP_COPYING = ["data.source.kinds.copy_ids=1"]
NIAH_RUNGS = [{"seq_len": 512, "batch": 8, "steps": steps, "overrides": [*KEEP_COPYING, f"data.source.kinds.niah={w}"]}
              for steps, w in ((600, 2), (900, 4), (1200, 4))]
LADDER = [COPY_WARMUP, {"seq_len": 128, "batch": 32, "steps": 1000, "overrides": KEEP_COPYING},
          {"seq_len": 256, "batch": 16, "steps": 400, "overrides": KEEP_COPYING},
          {"seq_len": 512, "batch": 8, "steps": 400, "overrides": KEEP_COPYING}, *NIAH_RUNGS]
PUBLISHED_OPTIONS = ["model/rosa/inputs=published", "model/rosa/grad=published", "model.rosa.bits=4"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps per stage on a few files (pipeline check)")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    p.add_argument("--out", type=Path, default=None,
                   help="where results.* and the plots are written (default: this folder, whose README holds the "
                        "table, for every arm; <logs>/report for a subset, so a partial run leaves it alone)")
    p.add_argument("--logs", type=Path, default=ROOT / "logs" / "retrofit_recovery", help="run folders")
    p.add_argument("--stage-a-steps", type=int, default=None,
                   help="stage-A steps of the trained ROSA and token arms (default: 1,000; the smoke run 2); a "
                        "logs folder holds one setting, so pass a new --logs")
    p.add_argument("--stage-b-steps", type=int, default=None,
                   help="steps of stage B and of the window model tuned as long without ROSA (default: 150; the "
                        "smoke run 2); a logs folder holds one setting, so pass a new --logs")
    p.add_argument("--stage-a-override", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override for every stage-A arm (the ROSA and token arms) and for stage B, which "
                        "continues one of them (not for the control), e.g. model.lr.A.rosa=1e-2 or "
                        "model.rosa.injection=post_mlp; repeatable; a logs folder holds one setting, so pass a new "
                        "--logs")
    p.add_argument("--pretrained-from", type=Path, default=None,
                   help="a logs folder of a study with the same pretraining settings: its pretraining runs, "
                        "backbone and task files are linked into --logs instead of pretraining again")
    return p.parse_args(argv)


PRETRAINED = ("pretrain", "backbone", "tasks")
STEP_SETTINGS = ("stage_a_steps", "stage_b_steps")   # --stage-a-steps, --stage-b-steps
ARM_ONLY = (*STEP_SETTINGS, "stage_a_overrides")   # settings that leave the pretraining and the tasks as they are


def link_pretraining(source: Path, s: dict, logs: Path) -> None:
    """Hard-link (copy where links fail) ``source``'s pretraining, backbone and tasks into ``logs``, after checking
    that ``source`` was written with the same settings apart from the arms' step counts."""
    record = source / "study.json"
    if not record.is_file() or not all((source / name).exists() for name in PRETRAINED):
        raise SystemExit(f"--pretrained-from {source}: expected a study logs folder holding study.json and "
                         f"{', '.join(PRETRAINED)}")
    changed = pretraining_changed(json.loads(record.read_text()), s)
    if changed:
        raise SystemExit(f"--pretrained-from {source}: its study used other pretraining settings "
                         f"({', '.join(changed)} differ)")
    for name in PRETRAINED:
        if not (logs / name).exists():
            shutil.copytree(source / name, logs / name, copy_function=link_or_copy)


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


SMOKE_FILES = ["bisect.py", "colorsys.py", "heapq.py", "copy.py", "glob.py", "shlex.py", "abc.py", "fnmatch.py",
               "string.py", "queue.py", "sched.py", "textwrap.py", "token.py", "keyword.py", "opcode.py",
               "stat.py", "types.py", "weakref.py", "numbers.py", "operator.py", "random.py", "shutil.py"]


def settings(smoke: bool, logs: Path) -> dict:
    """Sizes of every stage. The full sizes follow the step times measured in the README."""
    if smoke:
        from rosa_lightning.data.stdlib_corpus import stdlib_root

        corpus = [f"data.source.corpus.cache_dir={logs}/corpus", "data.source.corpus.vocab_size=300",
                  f"data.source.corpus.roots=[{stdlib_root()}]",
                  "+data.source.corpus.files=[" + ",".join(SMOKE_FILES) + "]",
                  "data.source.corpus.val_fraction=0.2", "data.source.corpus.test_fraction=0.3",
                  "data.source.max_val_rows=8", "data.batch_size=2", "data.source.corpus.min_file_bytes=100"]
        return {"smoke": True, "seq_len": 128, "window": 16, "stage_a_steps": 2, "stage_b_steps": 2,
                "ladder": [{"seq_len": 64, "batch": 2, "steps": 2}, {"seq_len": 128, "batch": 2, "steps": 2}],
                "task_records": 1, "task_tokens": (60, 400), "niah": [1024], "niah_samples": 1, "ppl_rows": 2, "repeat_rows": 2,
                "backbone": ["model.backbone.max_position_embeddings=2048", "model.backbone.num_hidden_layers=2",
                             "model.backbone.hidden_size=64", "model.backbone.intermediate_size=128",
                             "model.backbone.head_dim=16"],
                "extra": [*corpus, "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                          "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=1"]}
    return {"smoke": False, "seq_len": 512, "window": 64, "stage_a_steps": 1000, "stage_b_steps": 150,
            "ladder": LADDER,
            "task_records": 40, "task_tokens": (170, 430), "niah": [512, 1024, 2048], "niah_samples": 20, "ppl_rows": 64, "repeat_rows": 32,
            "backbone": [], "extra": []}  # the corpus cache stays in ${paths.data_dir}/code_corpus


def common_overrides(s: dict) -> list[str]:
    return [f"data.seq_len={s['seq_len']}", *s["extra"], "logger=csv", "trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false", "+callbacks.retrieval_runtime.torch_threads=1"]


def train_resuming(cfg, out_dir: Path):
    """``runs.train_or_reuse``, continuing a killed run from its ``checkpoints/last.ckpt`` (exact resume through
    ``ckpt_path``) instead of starting it again; its metrics then continue in a new ``csv/version_*``."""
    from omegaconf import open_dict

    ckpt = Path(out_dir) / "checkpoints" / "last.ckpt"
    if ckpt.is_file() and not cfg.get("ckpt_path"):
        step = int(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", -1))
        if 0 <= step < int(cfg.trainer.max_steps):
            with open_dict(cfg):
                cfg.ckpt_path = str(ckpt)
    return runs.train_or_reuse(cfg, out_dir)


def curves_of(out_dir: Path, key: str) -> tuple[list[int], list[float]]:
    """``key`` over every ``csv/version_*`` of a run folder (a resumed run logs into a new version)."""
    steps, values = [], []
    for version in sorted(Path(out_dir).glob("csv/version_*"), key=lambda p: int(p.name[8:])):
        with open(version / "metrics.csv", newline="") as f:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        x, y = runs.curve(rows, key)
        steps += x
        values += y
    return steps, values


def rung_overrides(s: dict, i: int, logs: Path) -> list[str]:
    """Overrides of ``experiment=pretrain_code_copy`` for rung ``i`` of the row-length ladder: its row length,
    batch (the same tokens per step), steps and mix, continuing from the rung before it."""
    rung = s["ladder"][i]
    ov = [*common_overrides(s), *s["backbone"], f"data.seq_len={rung['seq_len']}",
          f"data.batch_size={rung['batch']}", f"trainer.max_steps={rung['steps']}", *rung.get("overrides", [])]
    if i:
        ov.append(f"model.init_from={rung_dir(s, i - 1, logs) / 'checkpoints' / 'last.ckpt'}")
    return ov


def rung_dir(s: dict, i: int, logs: Path) -> Path:
    return logs / "pretrain" / f"rung{i + 1}_{s['ladder'][i]['seq_len']}"


def pretrain(s: dict, logs: Path) -> tuple[Path, dict]:
    """Train (or reuse) the global model on the row-length ladder (``experiment=pretrain_code_copy`` at each
    rung's row length, from the rung before it) and export the last rung as a plain Qwen3 directory; returns
    (dir, info)."""
    backbone_dir, info_file = logs / "backbone", logs / "pretrain" / "pretrain.json"
    if (backbone_dir / "config.json").is_file() and info_file.is_file():
        return backbone_dir, json.loads(info_file.read_text())
    rungs = []
    for i, rung in enumerate(s["ladder"]):
        out_dir = rung_dir(s, i, logs)
        cfg = runs.compose("pretrain_code_copy", rung_overrides(s, i, logs), out_dir)
        _, module, train_s, _ = train_resuming(cfg, out_dir)
        rungs.append({**rung, "train_s": train_s, "val_loss": curves_of(out_dir, "val/loss"),
                      "train_loss": curves_of(out_dir, "train/loss"), "step_s": curves_of(out_dir, "time/step_s")[1]})
        print(f"[pretrain] rung {i + 1}: {rung['steps']} steps of {rung['batch']} x {rung['seq_len']} "
              f"in {train_s / 60:.1f} min", flush=True)
    source = hydra.utils.instantiate(cfg.data.source)
    export_backbone(module, source.tokenizer, backbone_dir)
    info = {"train_s": sum(r["train_s"] for r in rungs), "steps": sum(r["steps"] for r in rungs), "rungs": rungs}
    info_file.write_text(json.dumps(info))
    return backbone_dir, info


def settings_changed(theirs: dict, s: dict) -> list[str]:
    """The keys of a recorded study.json (``theirs``) that differ from the settings ``s`` (as JSON, without
    ``extra``), sorted."""
    mine = json.loads(json.dumps({k: v for k, v in s.items() if k != "extra"}))
    return sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))


def pretraining_changed(theirs: dict, s: dict) -> list[str]:
    """``settings_changed`` without the arm-only settings (``ARM_ONLY``): the keys that make a recorded study's
    pretraining and tasks other than those of ``s``."""
    return [k for k in settings_changed(theirs, s) if k not in ARM_ONLY]


def check_logs(s: dict, logs: Path) -> None:
    """Refuse a logs folder written by a study of other settings (its backbone and arms would be reused)."""
    record = logs / "study.json"
    mine = {k: v for k, v in s.items() if k not in ("extra",)}
    if record.is_file():
        changed = settings_changed(json.loads(record.read_text()), s)
        if changed:
            raise SystemExit(f"{logs} holds a study with other settings ({', '.join(changed)} differ); "
                             f"pass another --logs or remove that folder to start again")
    elif (logs / "backbone").exists() or (logs / "pretrain").exists():
        raise SystemExit(f"{logs} holds runs of an earlier study without a study.json record of its settings; "
                         f"pass another --logs or remove that folder to start again")
    logs.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(mine, indent=1))


def build_tasks(s: dict, logs: Path, tokenizer) -> Path:
    """The held-out lcc / repobench-p files (LongBench layout) under ``logs/tasks``."""
    from rosa_lightning.evaluation.code_tasks import write_code_tasks

    task_dir = logs / "tasks"
    if (task_dir / "counts.json").is_file():
        return task_dir
    corpus = corpus_of(s, logs)
    counts = write_code_tasks(task_dir, corpus.texts("test"), tokenizer, s["task_records"],
                              min_tokens=s["task_tokens"][0], max_tokens=s["task_tokens"][1],
                              require_definition=not s["smoke"])
    (task_dir / "counts.json").write_text(json.dumps(counts))
    return task_dir


def corpus_of(s: dict, logs: Path):
    cfg = runs.compose("retrofit", common_overrides(s), logs / "scratch")
    return hydra.utils.instantiate(cfg.data.source).corpus


def arm_config(arm: str, s: dict, logs: Path, backbone: Path, best_a: str | None):
    name = f"retrofit_{arm}"  # conf/experiment/retrofit_<arm>.yaml
    ov = [*common_overrides(s), f"model.backbone={backbone}"]
    if arm != "global":
        ov.append(f"model.rosa.window={s['window']}")
    if arm == "stage_b":
        ov += [f"model.init_from={logs / best_a / 'checkpoints' / 'last.ckpt'}", f"trainer.max_steps={s['stage_b_steps']}"]
        ov += PUBLISHED_OPTIONS if best_a == "rosa_published" else []
        ov += s.get("stage_a_overrides", [])  # the branch it continues keeps its options (e.g. the injection)
    elif arm == "window_tuned":  # the control: as many steps as stage B, the backbone only
        ov.append(f"trainer.max_steps={s['stage_b_steps']}")
    elif arm in TRAINED:
        ov += [f"trainer.max_steps={s['stage_a_steps']}", *s.get("stage_a_overrides", [])]
    return runs.compose(name, ov, logs / arm)


def compose_eval(overrides: list[str], out_dir: Path):
    """``conf/eval.yaml`` with ``overrides``, outputs under ``out_dir`` (the eval entry point's config)."""
    return compose_config("eval", overrides, out_dir)


def arm_module(arm: str, cfg, logs: Path):
    """The arm's LightningModule and its training seconds: trained (or reused from its finished run) for the
    trained arms, built from the backbone for the others."""
    if arm in TRAINED:
        _, module, train_s, _ = train_resuming(cfg, logs / arm)
        return module, train_s
    return hydra.utils.instantiate(cfg.model), 0.0


COPY_KEYS = [f"{kind}_{which}loss" for kind in ("repeat", "digest") for which in ("", "first_")]
PROBE_KEYS = [*COPY_KEYS, "niah_value"]  # what ``probe_losses`` adds to an arm's result


def copy_loss_curves(module, s: dict, source) -> dict:
    """Per-position losses on the second copy of a repeated block of code and of digests (``repeat_loss``,
    ``digest_loss``) and on the first copy of the same rows (``*_first_loss``): the level of a model that does not
    copy, since nothing earlier in the row predicts a block's first occurrence."""
    out = {}
    for kind in ("repeat", "digest"):
        rows = RepeatRows(source, s["repeat_rows"], s["seq_len"], kind=kind)
        for name, data in ((f"{kind}_loss", rows), (f"{kind}_first_loss", FirstCopyRows(rows))):
            out[name] = loss_by_position(module, data, batch_size=min(4, s["repeat_rows"]))[0].tolist()
    return out


def niah_value_scores(module, tokenizer, s: dict) -> dict:
    """Per NIAH length (str): ``niah_probe.niah_answer_scores`` on the evaluation's own samples (RULER's generator,
    seed 42): the loss on the value's first token, where finding the needle shows before any whole value is right."""
    from experiments.retrofit_recovery.niah_probe import niah_answer_scores
    from rosa_lightning.evaluation.niah import generate_niah

    return {str(n): niah_answer_scores(module.model, tokenizer, generate_niah(tokenizer, n, s["niah_samples"], seed=42))
            for n in s["niah"]}


def probe_losses(module, s: dict, source, tokenizer) -> dict:
    """The arm's ``PROBE_KEYS``: its copy losses (``copy_loss_curves``) and NIAH-value scores (``niah_value_scores``)."""
    return {**copy_loss_curves(module, s, source), "niah_value": niah_value_scores(module, tokenizer, s)}


def run_arm(arm: str, s: dict, logs: Path, backbone: Path, task_dir: Path, tokenizer, best_a: str | None) -> dict:
    """Train (the ROSA and token arms) or build the arm, then evaluate it; cached in ``<arm>/result.json`` (an arm
    cached without the probe losses of ``PROBE_KEYS`` gets them added, nothing else evaluated again)."""
    from rosa_lightning.evaluation.cli import evaluate

    cached = logs / arm / "result.json"
    if cached.is_file():
        result = json.loads(cached.read_text())
        if arm == "stage_b" and result.get("after") != best_a:
            raise SystemExit(f"{logs / arm} holds stage B after {result.get('after', 'an unrecorded stage A')}, but the "
                             f"best stage A of this run is {best_a}: remove that folder to run stage B again")
        if all(k in result for k in PROBE_KEYS):
            return result
        cfg = arm_config(arm, s, logs, backbone, best_a)
        module, _ = arm_module(arm, cfg, logs)
        module.eval()
        result.update(probe_losses(module, s, hydra.utils.instantiate(cfg.data.source), tokenizer))
        cached.write_text(json.dumps(result))
        return result
    cfg = arm_config(arm, s, logs, backbone, best_a)
    result: dict = {"arm": arm, "window": cfg.model.rosa.window}
    if arm == "stage_b":
        result["after"] = best_a
    module, result["train_s"] = arm_module(arm, cfg, logs)
    if arm in TRAINED:
        result["val_loss"] = curves_of(logs / arm, "val/loss")
        result["step_s"] = curves_of(logs / arm, "time/step_s")[1]
    module.eval()
    clock = stopwatch()
    eval_cfg = compose_eval(["tasks=retrofit", f"data.dir={task_dir}", f"tasks.niah=[{','.join(map(str, s['niah']))}]",
                             f"niah.num_samples={s['niah_samples']}", f"longbench.max_length={s['seq_len']}",
                             "logger=none", "torch_threads=1", "device=cpu", f"arm={arm}"], logs / arm / "eval")
    evaluated = evaluate(eval_cfg, model=module.model, tokenizer=tokenizer)
    result["scores"] = {"lcc": evaluated["longbench"]["lcc"], "repobench-p": evaluated["longbench"]["repobench-p"],
                        **{f"niah_{n}": v for n, v in evaluated["niah"].items()}}
    source = hydra.utils.instantiate(cfg.data.source)
    docs = source.corpus.documents("test")
    loss, rows = loss_by_position(module, TokenChunkDataset(docs, s["seq_len"]), batch_size=min(4, s["ppl_rows"]),
                                  max_batches=max(1, s["ppl_rows"] // 4))
    result["loss_by_position"], result["ppl_rows"] = loss.tolist(), rows
    result.update(probe_losses(module, s, source, tokenizer))
    result["eval_s"] = clock()
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result))
    return result


class RepeatRows(Dataset):
    """Held-out rows ``[tail of a code row] EOT task EOT`` of a long-range mix task that holds one block twice, on
    the test split, in which only the second copy of the block is scored (labels -100 elsewhere, and on its first
    token): the tokens that the context beyond the window predicts and a window does not. ``kind``: ``repeat`` (a
    block of code, other code, the block again) or ``digest`` (a block of random digests, other code, the block
    again, under another header)."""

    def __init__(self, source, n: int, seq_len: int, seed: int = 4242, kind: str = "repeat") -> None:
        writer, backend = source.writer("test"), source.tokenizer.backend_tokenizer
        eot = source.corpus.eot_id
        code = pack_rows(source.corpus.documents("test"), seq_len)
        rng = np.random.default_rng(seed)
        self.rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        for _ in range(50 * n):
            if len(self.rows) == n:
                break
            text = writer.write(kind, int(rng.integers(seq_len // 2, seq_len)), rng)
            start, end = second_copy(text, kind)
            enc = backend.encode(text, add_special_tokens=False)
            inside = [i for i, (a, b) in enumerate(enc.offsets) if a >= start and b <= end][1:]
            ids = [eot, *enc.ids, eot]
            if len(ids) > seq_len or not inside:
                continue
            filler = code[int(rng.integers(len(code)))][: seq_len - len(ids)]
            row = torch.from_numpy(np.concatenate([filler, np.asarray(ids, dtype=np.int32)]).astype(np.int64))
            labels = torch.full_like(row, -100)
            at = len(filler) + 1  # row position of the task's first token
            labels[at + inside[0]: at + inside[-1] + 1] = row[at + inside[0]: at + inside[-1] + 1]
            self.rows.append((row, labels))
        if len(self.rows) < n:
            raise RuntimeError(f"RepeatRows: built {len(self.rows)} of {n} rows of {seq_len} tokens")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row, labels = self.rows[index]
        return {"input_ids": row, "labels": labels, "answer_mask": labels != -100}


class FirstCopyRows(RepeatRows):
    """The rows of a ``RepeatRows`` scored on the first copy of their block (``first_copy`` of the second's
    ``copy_core``) instead of the second; rows without such a first copy are left out."""

    def __init__(self, rows: RepeatRows) -> None:  # the rows of ``rows``, no new ones built
        self.rows = [(row, first) for row, labels in rows.rows
                     if (first := first_copy(row, labels)).ne(-100).any()]
        if not self.rows:
            raise ValueError("FirstCopyRows: no row holds its block's tokens twice")


def copy_core(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` (one scored run) less the run's first and last token, where BPE may split the two copies of a
    block differently; all -100 when the run is shorter than 3."""
    scored = (labels != -100).nonzero().flatten()
    out = torch.full_like(labels, -100)
    if len(scored) >= 3:
        out[scored[1]: scored[-1]] = labels[scored[1]: scored[-1]]
    return out


def first_copy(row: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Labels on the earliest occurrence in ``row``, before the scored run of ``labels``, of that run's
    ``copy_core``; all -100 when there is none."""
    scored = (labels != -100).nonzero().flatten()
    out = torch.full_like(row, -100)
    if len(scored) < 3:
        return out
    core = row[scored[1]: scored[-1]]
    n = len(core)
    windows = row[: int(scored[0])].unfold(0, n, 1) if int(scored[0]) >= n else row[:0].view(0, n)
    hits = (windows == core).all(dim=1).nonzero().flatten()
    if len(hits):
        at = int(hits[0])
        out[at: at + n] = core
    return out


def second_copy(text: str, kind: str) -> tuple[int, int]:
    """Character span [start, end) of the second copy of the block in a ``repeat`` or ``digest`` task's text."""
    if kind == "repeat":
        block = next((k for k in range(len(text) // 2, 0, -1) if text[:k] == text[-k:]), 0)
        return len(text) - block, len(text)
    for head, tail, _ in DIGEST_FORMATS:
        if text.startswith(head[0]):
            return text.rindex(head[1]) + len(head[1]), len(text) - len(tail[1])
    raise ValueError(f"second_copy: the text is not a {kind} task")


# A share of a gap is only reported where there is a gap to recover: global better than the reference by at least
# a point of score (×100, the rule of ``rosa_lightning.evaluation.compare``) or 10 % of perplexity; below that it
# is noise over a near-zero denominator, and where the reference is the better one nothing was lost to bring back.
MIN_LOG_PPL_GAP = math.log(1.1)


def share(row: dict, lo: dict, hi: dict, key: str) -> float:
    """(row - lo) / (hi - lo) on ``key`` (log scale for perplexity), NaN unless hi exceeds lo by the minimum gap."""
    if key.startswith("ppl"):
        return gap_recovered(-math.log(row[key]), -math.log(hi[key]), -math.log(lo[key]), MIN_LOG_PPL_GAP)
    return gap_recovered(row[key], hi[key], lo[key], MIN_GAP)


def summarize(results: dict, s: dict) -> dict:
    """Per arm: task scores, perplexity inside / beyond the window, and the share of the global-minus-window gap
    recovered on each task ((arm - window) / (global - window); for perplexity on the log scale). ``over_tuning``
    measures the trained arms against the window model trained the same way without ROSA (``window_tuned``):
    what the branch adds beyond the tuning itself."""
    W = s["window"]
    table = {}
    for arm, r in results.items():
        row = dict(r["scores"])
        row["ppl_within_window"] = perplexity(r["loss_by_position"][:W])
        row["ppl_beyond_window"] = perplexity(r["loss_by_position"][W:])
        row["ppl_repeat"] = perplexity(r["repeat_loss"])
        row["ppl_digest"] = perplexity(r["digest_loss"])
        for n, v in r.get("niah_value", {}).items():
            row[f"ppl_niah_value_{n}"] = math.exp(v["first"])
        for kind in ("repeat", "digest"):  # arms evaluated before the first-copy losses have none
            if f"{kind}_first_loss" in r:
                row[f"ppl_{kind}_first"] = perplexity(r[f"{kind}_first_loss"])
        table[arm] = row
    recovered, over_tuning = {}, {}
    if {"global", "window"} <= set(table):
        g, w = table["global"], table["window"]
        for arm, row in table.items():
            if arm in ("global", "window"):
                continue
            keys = [k for k in row if k in g and k != "ppl_within_window" and not k.endswith("_first")]
            recovered[arm] = {k: share(row, w, g, k) for k in keys}
            if "window_tuned" in table and arm in TRAINED - {"window_tuned"}:
                over_tuning[arm] = {k: share(row, table["window_tuned"], g, k) for k in keys}
    return {"table": table, "recovered": recovered, "over_tuning": over_tuning}


def write_report(results: dict, summary: dict, s: dict, pre: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    W, L = s["window"], s["seq_len"]
    keys = ["lcc", "repobench-p", *[f"niah_{n}" for n in s["niah"]], *[f"ppl_niah_value_{n}" for n in s["niah"]],
            "ppl_beyond_window", "ppl_repeat", "ppl_digest"]
    names = {"lcc": "lcc", "repobench-p": "repobench-p", "ppl_beyond_window": f"ppl t ≥ {W}",
             "ppl_repeat": "ppl code block, 2nd copy", "ppl_digest": "ppl digests, 2nd copy",
             "ppl_repeat_first": "ppl code block, 1st copy", "ppl_digest_first": "ppl digests, 1st copy",
             **{f"niah_{n}": f"NIAH {n}" for n in s["niah"]},
             **{f"ppl_niah_value_{n}": f"ppl NIAH {n}, value's 1st token" for n in s["niah"]}}
    arms = [a for a in TABLE_ARMS if a in results]
    table_keys = [*keys[:-2], "ppl_repeat_first", "ppl_repeat", "ppl_digest_first", "ppl_digest"]
    rows = [[LABELS[a], *[summary["table"][a].get(k) for k in table_keys], results[a]["train_s"] / 60]
            for a in arms]
    md = [f"Window {W} tokens, training length L = {L}; scores are LongBench's (×100) and RULER's; perplexity on "
          f"{results[arms[0]]['ppl_rows']} held-out rows of {L} tokens.\n\n",
          markdown_table(["arm", *[names[k] for k in table_keys], "train min"], rows, 2)]
    if summary["recovered"]:
        md.append("\nShare of the global-minus-window gap recovered, (arm − window) / (global − window) "
                  "(perplexity: on log perplexity):\n\n")
        rec_rows = [[LABELS[a], *[summary["recovered"][a].get(k) for k in keys]] for a in arms
                    if a in summary["recovered"]]
        md.append(markdown_table(["arm", *[names[k] for k in keys]], rec_rows, 2))
    if summary.get("over_tuning"):
        md.append("\nShare of the global-minus-tuned-window gap recovered, (arm − tuned window) / (global − tuned "
                  "window), against the window model trained the same way without ROSA:\n\n")
        tun_rows = [[LABELS[a], *[summary["over_tuning"][a].get(k) for k in keys]] for a in arms
                    if a in summary["over_tuning"]]
        md.append(markdown_table(["arm", *[names[k] for k in keys]], tun_rows, 2))
    if summary["recovered"] or summary.get("over_tuning"):
        md.append(f"\n— : global is not better than the reference by {MIN_GAP:g} point of score or "
                  f"{math.exp(MIN_LOG_PPL_GAP) - 1:.0%} of perplexity, so there is no gap to share.\n")
    ladder = ", then ".join(f"{r['steps']} steps of {r['batch']} x {r['seq_len']}" for r in pre["rungs"])
    md.append(f"\nPretraining (row-length ladder): {ladder}; {pre['steps']} steps, {pre['train_s'] / 60:.1f} min.\n")
    text = "".join(md)
    (out / "results.md").write_text(text)
    readme = out / "README.md"
    if readme.is_file() and not s["smoke"]:  # the README's results block is this table
        write_results_block(readme, text)
    write_json(out / "results.json", {"settings": {k: v for k, v in s.items() if k not in ("extra", "backbone")},
                                      "pretrain": pre, "summary": summary, "runs": results})

    def binned(losses: list[float]) -> tuple[list[int], list[float]]:
        return binned_perplexity(losses, BIN)

    line_panels(out / "perplexity_vs_position.png", [
        {"title": f"held-out perplexity by position (rows of {L})", "xlabel": "position t", "ylabel": "perplexity",
         "vline": W, "series": {LABELS[a]: binned(results[a]["loss_by_position"]) for a in arms}}], ncols=1)
    line_panels(out / "score_vs_length.png", [
        {"title": "RULER niah_single_1 vs context length", "xlabel": "tokens", "ylabel": "score",
         "vline": L, "series": {LABELS[a]: (s["niah"], [summary["table"][a][f"niah_{n}"] for n in s["niah"]])
                                for a in arms}}], ncols=1, logx=True)
    return text


def report_dir(out: Path | None, arms: list[str], logs: Path) -> Path:
    """Where the report goes: ``out`` if given, else this folder (its README's table) when every arm runs and
    ``<logs>/report`` for a subset of them."""
    if out is not None:
        return out
    return HERE if set(arms) == set(ARMS) else logs / "report"


def main(argv=None) -> int:
    args = parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    check_choices("--arms", arms, ARMS)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    logs = args.logs.resolve()
    s = settings(args.smoke, logs)
    for key in STEP_SETTINGS:
        steps = getattr(args, key)
        if steps is not None:
            if steps < 1:
                raise SystemExit(f"--{key.replace('_', '-')} must be at least 1, got {steps}")
            s[key] = steps
    bad = [o for o in args.stage_a_override if "=" not in o or o.startswith("=")]
    if bad:
        raise SystemExit(f"--stage-a-override expects KEY=VALUE (a Hydra override), got {', '.join(map(repr, bad))}")
    if args.stage_a_override:  # recorded only when given, so the folders of earlier studies stay comparable
        s["stage_a_overrides"] = list(args.stage_a_override)
    check_logs(s, logs)
    if args.pretrained_from is not None:
        link_pretraining(args.pretrained_from.resolve(), s, logs)
    clock = stopwatch()
    backbone, pre = pretrain(s, logs)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    task_dir = build_tasks(s, logs, tokenizer)
    results: dict = {}
    for arm in [a for a in ARMS if a in arms and a != "stage_b"]:
        results[arm] = run_arm(arm, s, logs, backbone, task_dir, tokenizer, None)
        print(f"[{arm}] {results[arm]['scores']} ({clock() / 60:.1f} min so far)", flush=True)
    if "stage_b" in arms:
        done_a = {a: results[a]["val_loss"][1][-1] for a in STAGE_A
                  if a in results and results[a].get("val_loss", ([], []))[1]}
        if not done_a:
            raise SystemExit(f"--arms stage_b needs one of {', '.join(STAGE_A)} (its stage A) in the same run")
        best = min(done_a, key=done_a.get)
        results["stage_b"] = run_arm("stage_b", s, logs, backbone, task_dir, tokenizer, best)
    summary = summarize(results, s)
    out = report_dir(args.out, arms, logs)
    print(write_report(results, summary, s, pre, out))
    print(f"report written to {out}")
    print(f"study finished in {clock() / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
