"""Long-context recall: global attention vs sliding window vs window + ROSA / token channel, on MQAR (random and
recurring-key filler) and passkey, trained at L = 256 tokens and evaluated at L, 2L, 4L, 8L.

    python -m experiments.long_context_recall.run            # the full study (about 30 min on 2 CPU cores)
    python -m experiments.long_context_recall.run --smoke    # seconds-long pipeline check (tests/studies)

Every arm is a config, ``conf/experiment/study_recall_<arm>.yaml``, trained through ``train(cfg)`` exactly as
``python train.py experiment=study_recall_<arm> <task overrides>`` would; this script only adds the CSV logger,
one torch thread per worker process, and the evaluations after training. Run logs go to
``logs/study_recall/<task>/<arm>/``; results (JSON, CSV, markdown, PNG) to this folder (or ``--out``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import hydra
import torch

from experiments.harness import runs
from experiments.harness.diagnostics import grad_norms_on_batch, retrieval_diagnostics
from experiments.harness.evaluate import accuracy_at_lengths, batches, task_at_length
from experiments.harness.report import line_panels, markdown_table, write_csv, write_json
from experiments.harness.runs import Job, check_choices, run_pool, stopwatch
from rosa_lightning.data.synthetic import SyntheticDataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

TASKS = {  # task -> overrides of the shared study config
    "mqar": [],
    "mqar_recurring": ["data.source.task.filler=recurring_keys"],
    "passkey": ["data=passkey"],
}
ARMS = {  # task -> arms (conf/experiment/study_recall_<arm>.yaml); protocol starts from the global arm
    "mqar": ["global", "window", "rosa", "rosa_options", "rosa_shift", "token", "both", "protocol", "global_4x"],
    "mqar_recurring": ["global", "window", "rosa", "rosa_shift", "token", "both"],
    "passkey": ["global", "window", "rosa", "rosa_shift", "token", "both"],
}
SUPPLEMENTARY = {"global_4x": ("global", 4)}  # arm -> (config arm, step multiple): a longer budget, for reference
STEPS = {"mqar": 500, "mqar_recurring": 200, "passkey": 200}  # training steps of every arm of a task
LABELS = {"global": "global attention", "window": "window only", "rosa": "window + ROSA",
          "rosa_options": "window + ROSA (matched K, hard field)",
          "rosa_shift": "window + ROSA (M=8, K/V shifted, Q/K tied)", "token": "window + token channel",
          "both": "window + ROSA + token channel", "protocol": "protocol: global -> window -> A -> B",
          "converted": "global weights, converted to window (no training)",
          "global_4x": "global attention, 4x the steps (reference)"}
FACTORS = (1, 2, 4, 8)
EVAL_SEED = 424242


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps per arm, small evaluations (pipeline check)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--procs", type=int, default=None, help="worker processes (default: 2, smoke: 1)")
    p.add_argument("--out", type=Path, default=HERE, help="where results.* and the plots are written")
    p.add_argument("--logs", type=Path, default=ROOT / "logs" / "study_recall", help="run folders")
    return p.parse_args(argv)


def settings(smoke: bool) -> dict:
    if smoke:
        return {"seq_len": 128, "window": 16, "steps": {t: 4 for t in TASKS}, "eval_rows": 16, "diag_rows": 16,
                "extra": ["trainer.val_check_interval=2", "data.source.num_val=32", "trainer.limit_val_batches=1",
                          "callbacks.rosa_grad_norms.log_every_n_steps=1", "trainer.log_every_n_steps=1"]}
    return {"seq_len": 256, "window": 32, "steps": STEPS, "eval_rows": 64, "diag_rows": 32, "extra": []}


def arm_overrides(task: str, arm: str, s: dict) -> list[str]:
    steps = s["steps"][task] * SUPPLEMENTARY.get(arm, (arm, 1))[1]
    ov = [*TASKS[task], f"data.seq_len={s['seq_len']}", f"trainer.max_steps={steps}"]
    if SUPPLEMENTARY.get(arm, (arm,))[0] != "global":  # the global arm keeps model.rosa.window=null from its config
        ov.append(f"model.rosa.window={s['window']}")
    if arm == "protocol":  # half the steps in stage A, then stage B
        ov.append(f"train.stage_a_tokens={(steps // 2) * 16 * s['seq_len']}")
    return ov + s["extra"]


def run_arm(task: str, arm: str, overrides: list[str], out_dir: str, eval_rows: int, diag_rows: int,
            init_from: str | None = None) -> dict:
    """Train one arm (worker process), then evaluate it at every length; returns the measured figures."""
    logging.getLogger("lightning").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    experiment = f"study_recall_{SUPPLEMENTARY.get(arm, (arm,))[0]}"
    ov = [*overrides, "logger=csv", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
          "+callbacks.retrieval_runtime.torch_threads=1"]
    if init_from is not None:
        ov.append(f"model.init_from={init_from}")
    cfg = runs.compose(experiment, ov, Path(out_dir))
    result: dict = {"task": task, "arm": arm, "overrides": overrides, "window": cfg.model.rosa.window}
    cached = Path(out_dir) / "result.json"
    if cached.is_file():  # this arm finished in an earlier invocation with the same settings
        result = json.loads(cached.read_text())
        for key in ("accuracy", "converted_accuracy"):  # JSON object keys are strings; lengths are ints
            if key in result:
                result[key] = {int(n): v for n, v in result[key].items()}
        return result
    if arm == "protocol":  # the drop: the global model's weights under the window, before any ROSA training
        converted = hydra.utils.instantiate(cfg.model)
        task_obj = hydra.utils.instantiate(cfg.data.source.task)
        lengths = [f * task_obj.seq_len for f in FACTORS]
        result["converted_accuracy"] = accuracy_at_lengths(converted, task_obj, lengths, eval_rows, EVAL_SEED)
        del converted
    metrics, module, result["train_s"], result["reused_run"] = runs.train_or_reuse(cfg, Path(out_dir))
    task_obj = hydra.utils.instantiate(cfg.data.source.task)
    lengths = [f * task_obj.seq_len for f in FACTORS]
    clock = runs.stopwatch()
    result["accuracy"] = accuracy_at_lengths(module, task_obj, lengths, eval_rows, EVAL_SEED)
    result["diagnostics"] = {
        f"{f}L": retrieval_diagnostics(module, SyntheticDataset(task_at_length(task_obj, f * task_obj.seq_len),
                                                                diag_rows, seed=EVAL_SEED), batch_size=16)
        for f in (1, 4)}
    batch = next(batches(SyntheticDataset(task_obj, 16, seed=EVAL_SEED), 16))
    result["grad_norms_final"] = grad_norms_on_batch(module, batch)
    result["eval_s"] = clock()
    rows = runs.read_metrics(Path(out_dir))
    result["curves"] = {key: runs.curve(rows, key) for key in sorted({k for r in rows for k in r})
                        if key.startswith(("val/", "train/loss", "train/answer_acc", "rosa_grad/", "train/stage_b"))}
    result["final_val"] = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
    result["stage"] = module.stage
    cached.write_text(json.dumps(result))
    return result


def build_jobs(tasks: list[str], s: dict, logs: Path) -> dict:
    jobs = {}
    for task in tasks:
        for arm in ARMS[task]:
            out_dir = logs / task / arm
            kw = dict(task=task, arm=arm, overrides=arm_overrides(task, arm, s), out_dir=str(out_dir),
                      eval_rows=s["eval_rows"], diag_rows=s["diag_rows"])
            after: tuple[str, ...] = ()
            if arm == "protocol":
                kw["init_from"] = str(logs / task / "global" / "checkpoints" / "last.ckpt")
                after = (f"{task}/global",)
            jobs[f"{task}/{arm}"] = Job(run_arm, kw, after)
    # the longest jobs first: ROSA arms, then the rest; the protocol waits for its global arm anyway
    order = sorted(jobs, key=lambda n: (n.split("/")[1] not in SUPPLEMENTARY, -s["steps"][n.split("/")[0]],
                                        "rosa" not in n and "both" not in n))
    return {n: jobs[n] for n in order}


def summarize(results: dict, tasks: list[str]) -> dict:
    """Per task: accuracy table rows, and the target checks (issue: window + ROSA vs window / global)."""
    summary = {}
    for task in tasks:
        acc = {arm: results[f"{task}/{arm}"]["accuracy"] for arm in ARMS[task] if f"{task}/{arm}" in results}
        if f"{task}/protocol" in results:
            acc["converted"] = results[f"{task}/protocol"]["converted_accuracy"]
        lengths = sorted(next(iter(acc.values())))
        L, L4 = lengths[0], lengths[2]
        checks = {}
        for arm in ("rosa", "rosa_options", "rosa_shift"):  # the arms with the token channel off
            if {arm, "window", "global"} <= set(acc):
                g = acc["global"][L]
                checks[arm] = {
                    "minus_window_at_L": acc[arm][L] - acc["window"][L],
                    "over_global_at_L": acc[arm][L] / g if g > 0 else math.nan,
                    "minus_global_at_4L": acc[arm][L4] - acc["global"][L4],
                }
        summary[task] = {"accuracy": acc, "lengths": lengths, "checks": checks}
    return summary


def stage_a_end(curves: dict) -> tuple[int | None, float | None]:
    """(step, val/answer_acc) of the last validation before stage B began (the end of stage A)."""
    st_steps, st = curves.get("train/stage_b", ([], []))
    switch = next((s for s, v in zip(st_steps, st) if v >= 1.0), None)
    steps, vals = curves.get("val/answer_acc", ([], []))
    before = [(s, v) for s, v in zip(steps, vals) if switch is None or s < switch]
    return before[-1] if before else (None, None)


def write_report(results: dict, summary: dict, tasks: list[str], out: Path, s: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    md = []
    csv_rows = []
    for task in tasks:
        lengths = summary[task]["lengths"]
        header = ["arm", *[f"acc @ {n} ({n // lengths[0]}L)" for n in lengths], "train min"]
        rows = []
        for arm, acc in summary[task]["accuracy"].items():
            r = results.get(f"{task}/{arm}", {})
            rows.append([LABELS[arm], *[acc[n] for n in lengths],
                         r.get("train_s", math.nan) / 60 if arm != "converted" else None])
            csv_rows += [[task, arm, n, acc[n]] for n in lengths]
        md.append(f"### {task} (trained {s['steps'][task]} steps at L = {lengths[0]}, window {s['window']})\n")
        md.append(markdown_table(header, rows))
        if f"{task}/protocol" in results:
            step, val = stage_a_end(results[f"{task}/protocol"]["curves"])
            md.append(f"\nProtocol: validation accuracy at the end of stage A (step {step}): {val if val is None else round(val, 3)}.\n")
        md.append("\n")
    md.append("### Per-layer diagnostics of the ROSA arms\n\n")
    diag_rows = []
    for name, r in results.items():
        for at, layers in r.get("diagnostics", {}).items():
            for layer, d in layers.items():
                g = r["grad_norms_final"]
                i = layer.removeprefix("layer")
                diag_rows.append([name, at, layer, d["valid_tau"], d["valid_tau_at_queries"], d["right_slot"],
                                  d["any_route_right"], g.get(f"l{i}_q"), g.get(f"l{i}_k"), g.get(f"l{i}_v"),
                                  g.get(f"l{i}_e1"), g.get(f"l{i}_out")])
    md.append(markdown_table(["run", "length", "layer", "valid tau", "valid tau @ queries", "right slot",
                              "any route right", "|dW_q|", "|dW_k|", "|dW_v|", "|de1|", "|dW_out|"], diag_rows,
                             digits=4))
    md.append("\nright slot: fraction of (row, route, query) whose retrieved time is the answer's binding slot "
              "(s or s+1); gradient norms on one fixed batch of 16 rows after training.\n")
    md.append("\n### Targets (window + ROSA, token channel off)\n\n")
    md.append(markdown_table(["task", "arm", "− window @ L (target: well above 0)", "/ global @ L (target ≥ 0.95)",
                              "− global @ 4L (target > 0)"],
                             [[t, LABELS[a], *c.values()] for t in tasks for a, c in summary[t]["checks"].items()]))
    text = "".join(md)
    (out / "results.md").write_text(text)
    write_csv(out / "results.csv", ["task", "arm", "seq_len", "answer_acc"], csv_rows)
    write_json(out / "results.json", {"settings": {k: v for k, v in s.items() if k != "extra"},
                                      "summary": summary, "runs": results})
    line_panels(out / "accuracy_vs_length.png", [
        {"title": f"{t}: answer accuracy vs context length", "xlabel": "tokens", "ylabel": "answer accuracy",
         "ylim": (-0.02, 1.02), "series": {LABELS[a]: (summary[t]["lengths"], [acc[n] for n in summary[t]["lengths"]])
                                           for a, acc in summary[t]["accuracy"].items()}}
        for t in tasks], logx=True)
    panels = [{"title": f"{t}: validation answer accuracy (L)", "xlabel": "step", "ylabel": "answer accuracy",
               "ylim": (-0.02, 1.02),
               "series": {LABELS[a]: tuple(results[f"{t}/{a}"]["curves"].get("val/answer_acc", ([], [])))
                          for a in ARMS[t] if f"{t}/{a}" in results}} for t in tasks]
    for stream in ("q", "k", "v"):  # the primary task only: one line per ROSA arm, layers combined
        t = tasks[0]
        series = {}
        for a in ARMS[t]:
            curves = results.get(f"{t}/{a}", {}).get("curves", {})
            keys = sorted(k for k in curves if k.startswith("rosa_grad/") and k.endswith(f"_{stream}"))
            if keys:
                steps = curves[keys[0]][0]
                series[LABELS[a]] = (steps, [math.sqrt(sum(curves[k][1][i] ** 2 for k in keys))
                                             for i in range(len(steps))])
        if series:
            panels.append({"title": f"{t}: |dL/dW_{stream}| of the ROSA layers", "xlabel": "step",
                           "ylabel": "L2 norm (layers combined)", "series": series, "logy": True})
    line_panels(out / "learning_curves.png", panels)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    check_choices("--tasks", tasks, list(TASKS))
    s = settings(args.smoke)
    procs = args.procs or (1 if args.smoke else 2)
    clock = stopwatch()
    results = run_pool(build_jobs(tasks, s, args.logs), procs=procs)
    summary = summarize(results, tasks)
    text = write_report(results, summary, tasks, args.out, s)
    print(text)
    print(f"study finished in {clock() / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
