"""How sure are the retrofit study's scores? Finished arms rescored on every held-out record, with intervals.

The study scores 40 lcc and 40 repobench-p records and 20 NIAH samples per length: one NIAH sample is 5 points,
and the lcc gap between global and window (about 2 points) is within the noise of 40 records. This command
evaluates finished arms (of one study logs folder, or of several that share its backbone through
``--pretrained-from``) on every record the held-out files give (at most one per test file) and on more NIAH
samples, through the same evaluation API, and reports each score with a 95 % percentile-bootstrap interval and
the share of the global-minus-window gap recovered, with its paired interval (the same resampled records for
every arm)::

    python -m experiments.retrofit_recovery.rescore logs/retrofit_recovery/global logs/retrofit_recovery/window \\
        logs/retrofit_recovery/stage_b --out logs/rescore

Each RUN is an arm folder of a study (``<logs>/<arm>``, finished: it holds ``result.json``), or the model a
trained arm kept at its best NIAH step (``<logs>/<arm>/best/niah_single_1_<n>``, written with
``callbacks=keep_best_niah``), optionally as ``LABEL=<path>``; the runs whose arm is ``global`` and ``window`` are
the references of the shares. A trained arm is loaded from its merged ``model/`` folder (a kept model from its own), global and the window conversions are built from the
backbone as the study builds them. Everything goes under ``--out``: the task files (``tasks/``), each arm's
evaluation (``arms/<label>/``, reused when the command runs again), ``results.json``, ``results.md`` and
``scores_ci.png``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from experiments.harness.report import _pyplot, markdown_table, write_json
from experiments.harness.statistics import paired_bootstrap_means, percentile_interval
from experiments.retrofit_recovery import run as study
from rosa_lightning.evaluation.compare import MIN_GAP, gap_recovered

CODE_TASKS = ("lcc", "repobench-p")
LEVEL = 0.95


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="[LABEL=]<study logs>/<arm> of a finished arm")
    p.add_argument("--out", type=Path, required=True, help="folder for the tasks, the evaluations and the report")
    p.add_argument("--records", type=int, default=None,
                   help="lcc and repobench-p records (default: as many as the held-out files give, one per file)")
    p.add_argument("--niah", default=None, help="comma-separated NIAH lengths (default: the study's row length)")
    p.add_argument("--niah-samples", type=int, default=100, help="RULER niah_single_1 samples per length")
    p.add_argument("--num-boot", type=int, default=2000, help="bootstrap resamples of the intervals")
    args = p.parse_args(argv)
    for flag in ("records", "niah_samples", "num_boot"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    return args


def parse_run(spec: str) -> tuple[str | None, Path]:
    """``[LABEL=]PATH`` -> (label or None, resolved path)."""
    label, sep, path = spec.partition("=")
    return (label, Path(path).resolve()) if sep and label and "/" not in label else (None, Path(spec).resolve())


def study_settings(logs: Path) -> dict:
    """The study's settings (``run.settings`` of its study.json's kind, with the recorded arm-only settings),
    refused where its record differs from this code's settings in anything but those."""
    record = logs / "study.json"
    if not record.is_file():
        raise SystemExit(f"{logs}: expected a study logs folder holding study.json (a RUN is <study logs>/<arm>)")
    theirs = json.loads(record.read_text())
    s = study.settings(bool(theirs.get("smoke")), logs)
    changed = study.pretraining_changed(theirs, s)
    if changed:
        raise SystemExit(f"{logs}: its study used other settings than this code's ({', '.join(changed)} differ)")
    s.update({k: theirs[k] for k in study.ARM_ONLY if k in theirs})
    return s


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def arm_folder(path: Path) -> Path:
    """The arm folder of a RUN path: ``path`` itself, or ``<logs>/<arm>`` of ``<logs>/<arm>/best/<task>``."""
    return path.parent.parent if path.parent.name == "best" and path.parent.parent.name in study.ARMS else path


def run_source(run: dict) -> Path:
    """Where a run's model lives: the kept best model's folder, else the arm folder."""
    return run.get("model_dir") or run["logs"] / run["arm"]


def collect_runs(specs: list[str]) -> list[dict]:
    """The runs as dicts (label, logs, arm, settings, backbone: its SHA-256), checked: finished arms of known
    names, one backbone."""
    runs, digests, labels = [], {}, set()
    resolved = [(spec, *parse_run(spec)) for spec in specs]
    one_study = len({arm_folder(path).parent for _, _, path in resolved}) == 1  # then arm names label the runs
    for spec, label, path in resolved:
        model_dir = None
        if arm_folder(path) != path:  # the model a trained arm kept at its best NIAH step (keep_best_niah)
            model_dir, path = path, arm_folder(path)
            if not (model_dir / "best.json").is_file():
                raise SystemExit(f"{spec}: not a kept best model (no best.json)")
            if path.name not in study.TRAINED:
                raise SystemExit(f"{spec}: {path.name!r} is not a trained arm, so it has no kept model")
        logs, arm = path.parent, path.name
        if arm not in study.ARMS:
            raise SystemExit(f"{spec}: {arm!r} is not an arm of the study (expected <study logs>/<arm>, arm one of "
                             f"{', '.join(study.ARMS)})")
        if not (path / "result.json").is_file():
            raise SystemExit(f"{spec}: not a finished arm (no result.json); run the study for it first")
        backbone = logs / "backbone" / "model.safetensors"
        if not backbone.is_file():
            raise SystemExit(f"{spec}: its study folder {logs} holds no backbone/model.safetensors")
        digests.setdefault(logs, file_digest(backbone))
        name = arm if model_dir is None else f"{arm}_best_{model_dir.name}"
        label = label or (name if one_study else f"{logs.name}/{name}")
        if label in labels:
            raise SystemExit(f"two runs are labelled {label!r}; name them LABEL=<logs>/<arm>")
        labels.add(label)
        runs.append({"label": label, "logs": logs, "arm": arm, "settings": study_settings(logs),
                     "backbone": digests[logs], "model_dir": model_dir})
    if len(set(digests.values())) > 1:
        raise SystemExit("the runs' studies have different backbones (" + ", ".join(str(k) for k in digests) +
                         "): rescore arms of one pretraining (studies linked with --pretrained-from) together")
    arms = [r["arm"] for r in runs]
    if "global" not in arms or "window" not in arms:
        raise SystemExit("the runs must include a global and a window arm (the references of the shares)")
    first = runs[0]["settings"]
    for r in runs[1:]:
        if any(r["settings"][k] != first[k] for k in ("seq_len", "window", "task_tokens")):
            raise SystemExit(f"{r['logs']}: row length, window or task sizes differ from {runs[0]['logs']}")
    return runs


def build_tasks(run: dict, tokenizer, out: Path, records: int | None) -> Path:
    """lcc / repobench-p files of ``records`` records (default: every held-out file that gives one) under
    ``<out>/tasks``, from the test split of ``run``'s study; a folder built with other settings is refused."""
    from rosa_lightning.evaluation.code_tasks import write_code_tasks

    s, task_dir = run["settings"], out / "tasks"
    texts = study.corpus_of(s, run["logs"]).texts("test")
    want = {"records": records or len(texts), "task_tokens": list(s["task_tokens"]), "backbone": run["backbone"]}
    record = task_dir / "settings.json"
    if record.is_file():
        if json.loads(record.read_text()) != want:
            raise SystemExit(f"{task_dir} holds tasks built with other settings ({record}): pass another --out")
        return task_dir
    counts = write_code_tasks(task_dir, texts, tokenizer, want["records"], min_tokens=s["task_tokens"][0],
                              max_tokens=s["task_tokens"][1], require_definition=not s["smoke"])
    (task_dir / "counts.json").write_text(json.dumps(counts))
    record.write_text(json.dumps(want))
    return task_dir


def arm_model(run: dict):
    """The arm's model as the study evaluated it: a trained arm's merged ``model/``, or global / a window
    conversion built from the backbone."""
    from rosa_lightning.generation.loading import load_run

    if run["arm"] in study.TRAINED:  # loaded, never trained: study.arm_module would train an unfinished arm
        model, _ = load_run(str(run_source(run)), device="cpu")
    else:
        cfg = study.arm_config(run["arm"], run["settings"], run["logs"], run["logs"] / "backbone", None)
        model = study.arm_module(run["arm"], cfg, run["logs"])[0].model
    return model.eval()


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", label)


def evaluate_run(run: dict, tokenizer, task_dir: Path, lengths: list[int], samples: int, out: Path) -> Path:
    """``evaluate`` of the run on the tasks (continued where a killed evaluation stopped; reused once finished),
    plus the teacher-forced NIAH probe (``niah_probe.niah_answer_scores``) on the same samples."""
    from experiments.retrofit_recovery.niah_probe import niah_answer_scores
    from rosa_lightning.evaluation.cli import evaluate
    from rosa_lightning.evaluation.niah import generate_niah

    eval_dir = out / "arms" / slug(run["label"])
    probe_file, record = eval_dir / "niah_probe.json", eval_dir / "rescore.json"
    want = {"run": os.path.relpath(run_source(run), out), "niah": lengths, "niah_samples": samples}
    if eval_dir.exists():
        had = json.loads(record.read_text()) if record.is_file() else None
        if had != want:
            raise SystemExit(f"{eval_dir} holds an evaluation of {had or 'unrecorded settings'}, not of {want}: "
                             f"label the run otherwise (LABEL=<logs>/<arm>) or pass another --out")
        if (eval_dir / "results.json").is_file() and probe_file.is_file():
            return eval_dir
    eval_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(want))
    model = arm_model(run)
    overrides = ["tasks=retrofit", f"data.dir={task_dir}", f"tasks.niah=[{','.join(map(str, lengths))}]",
                 f"niah.num_samples={samples}", f"longbench.max_length={run['settings']['seq_len']}",
                 "logger=none", "torch_threads=1", "device=cpu", f"arm={run['label']}"]
    if (eval_dir / "protocol.json").is_file():
        overrides.append(f"resume={eval_dir}")
    evaluate(study.compose_eval(overrides, eval_dir), model=model, tokenizer=tokenizer)
    probe = {str(n): niah_answer_scores(model, tokenizer, generate_niah(tokenizer, n, samples, seed=42))
             for n in lengths}
    probe_file.write_text(json.dumps(probe))
    return eval_dir


def sample_scores(eval_dir: Path, task: str) -> dict[str, float]:
    """Per-sample official scores (0-100) of ``task`` (``lcc``, ``repobench-p`` or ``niah_single_1_<n>``) from
    the evaluation's prediction file, keyed by sample id; checked against the task score it reported."""
    from rosa_lightning.evaluation import longbench, niah

    rows = [json.loads(line) for line in (eval_dir / "predictions" / f"{task}.jsonl").read_text().splitlines()
            if line.strip()]
    if task in CODE_TASKS:
        scores = {r["_id"]: 100 * longbench.score_sample(task, r["pred"], r["answers"], r["all_classes"]) for r in rows}
        reported = json.loads((eval_dir / "results.json").read_text())["longbench"][task]
    else:
        scores = {r["_id"]: 100 * niah.score_niah_sample(r["pred"], r["answers"]) for r in rows}
        reported = json.loads((eval_dir / "results.json").read_text())["niah"][task.rsplit("_", 1)[1]]
    mean = sum(scores.values()) / len(scores)
    if abs(mean - reported) > 0.0051:
        raise RuntimeError(f"{eval_dir}: the per-sample scores of {task} average {mean:.4f}, but the evaluation "
                           f"reported {reported}")
    return scores


def summarize_task(labels: list[str], scores: list[dict[str, float]], ref: tuple[int, int], num_boot: int,
                   seed: int = 0) -> dict:
    """Means, percentile-bootstrap intervals and gap shares of one task. ``scores[i]``: arm i's per-sample
    scores (the same sample ids for every arm); ``ref``: the indices of global and window."""
    ids = sorted(scores[0])
    for label, s in zip(labels, scores):
        if sorted(s) != ids:
            raise RuntimeError(f"{label} was scored on other samples than {labels[0]}")
    matrix = np.array([[s[i] for i in ids] for s in scores])
    boots = paired_bootstrap_means(matrix, num_boot, seed)
    g, w = ref
    means = matrix.mean(axis=1)
    gap_boot = boots[:, g] - boots[:, w]
    gap = {"value": float(means[g] - means[w]), "ci": percentile_interval(gap_boot, LEVEL)}
    resolved = gap["ci"][0] > 0
    arms = {}
    for a, label in enumerate(labels):
        share_boot = np.where(gap_boot >= MIN_GAP, (boots[:, a] - boots[:, w]) / np.where(gap_boot == 0, 1, gap_boot),
                              np.nan)
        arms[label] = {"mean": float(means[a]), "ci": percentile_interval(boots[:, a], LEVEL),
                       "minus_window_ci": percentile_interval(boots[:, a] - boots[:, w], LEVEL)}
        if a not in ref:
            arms[label]["share"] = gap_recovered(float(means[a]), float(means[g]), float(means[w]))
            arms[label]["share_ci"] = percentile_interval(share_boot, LEVEL) if resolved else (math.nan, math.nan)
    return {"samples": len(ids), "references": {"global": labels[g], "window": labels[w]}, "gap": gap,
            "gap_resolved": bool(resolved), "arms": arms}


def interval(ci) -> str:
    lo, hi = ci
    return "—" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]"


def with_interval(value, ci) -> str:
    """``value [lo, hi]``; an em dash for NaN or None, the value alone where the interval is blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.2f}" if math.isnan(ci[0]) else f"{value:.2f} {interval(ci)}"


def write_report(summary: dict, probes: dict, out: Path) -> str:
    tasks = list(summary)
    labels = list(summary[tasks[0]]["arms"])
    lengths = list(next(iter(probes.values())))
    header = ["arm"]
    for t in tasks:
        header += [f"{t} ({summary[t]['samples']})", "share of gap"]
    header += [f"NIAH {n}: value's 1st-token loss (nats), all digits argmax" for n in lengths]
    rows = []
    for label in labels:
        row = [label]
        for t in tasks:
            a = summary[t]["arms"][label]
            row += [with_interval(a["mean"], a["ci"]), with_interval(a.get("share"), a.get("share_ci", (math.nan,) * 2))]
        row += [f"{probes[label][n]['first']:.2f}, {100 * probes[label][n]['exact']:.0f} %" for n in lengths]
        rows.append(row)
    gaps = "; ".join(f"{t} {summary[t]['gap']['value']:.2f} {interval(summary[t]['gap']['ci'])}"
                     + ("" if summary[t]["gap_resolved"] else " (not resolved: its interval includes 0)")
                     for t in tasks)
    text = (markdown_table(header, rows, digits=2) + f"\nScores with their 95 % intervals (percentile bootstrap "
            "over the samples, paired across arms; the sample count in each header). Global minus window: "
            f"{gaps}. Shares are (arm - window) / (global - window), with an interval only where the gap is "
            "resolved.\n")
    (out / "results.md").write_text(text)
    plot(summary, out / "scores_ci.png")
    return text


def plot(summary: dict, path: Path) -> None:
    plt = _pyplot()
    tasks = list(summary)
    labels = list(summary[tasks[0]]["arms"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 0.35 * len(labels) + 1.4), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        arms = summary[t]["arms"]
        ys = np.arange(len(labels))[::-1]
        means = [arms[a]["mean"] for a in labels]
        err = np.array([[m - arms[a]["ci"][0], arms[a]["ci"][1] - m] for a, m in zip(labels, means)]).T
        ax.errorbar(means, ys, xerr=err, fmt="o", markersize=3, capsize=2)
        for ref, colour in (("global", "tab:green"), ("window", "tab:red")):
            ax.axvline(arms[summary[t]["references"][ref]]["mean"], color=colour, linestyle=":", linewidth=1,
                       label=ref)
        ax.legend(fontsize=7)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels if ax is axes[0][0] else [""] * len(labels), fontsize=7)
        ax.set_title(f"{t} ({summary[t]['samples']} samples, 95 % intervals)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    runs = collect_runs(args.runs)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    s = runs[0]["settings"]
    lengths = [int(n) for n in args.niah.split(",")] if args.niah else [s["niah"][0]]
    tokenizer = AutoTokenizer.from_pretrained(str(runs[0]["logs"] / "backbone"))
    task_dir = build_tasks(runs[0], tokenizer, out, args.records)
    dirs, probes = {}, {}
    for r in runs:
        dirs[r["label"]] = evaluate_run(r, tokenizer, task_dir, lengths, args.niah_samples, out)
        probes[r["label"]] = json.loads((dirs[r["label"]] / "niah_probe.json").read_text())
        print(f"[{r['label']}] evaluated", flush=True)
    labels = [r["label"] for r in runs]
    arms = [r["arm"] for r in runs]
    ref = (arms.index("global"), arms.index("window"))
    summary = {t: summarize_task(labels, [sample_scores(dirs[l], t) for l in labels], ref, args.num_boot)
               for t in [*CODE_TASKS, *[f"niah_single_1_{n}" for n in lengths]]}
    write_json(out / "results.json", {"runs": {r["label"]: os.path.relpath(run_source(r)) for r in runs},
                                      "niah_samples": args.niah_samples, "summary": summary, "niah_probe": probes})
    print(write_report(summary, probes, out))
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
