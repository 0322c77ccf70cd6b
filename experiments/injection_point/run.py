"""Injection point: does adding the ROSA branch's output after the MLP (``model.rosa.injection=post_mlp``, where the
CPU retrieval can overlap the whole layer) learn as well as the published placement after attention
(``post_attn``)?

    python -m experiments.injection_point.run          # every arm (about 25 min on 2 CPU cores)
    python -m experiments.injection_point.run --smoke  # seconds-long pipeline check (tests/studies)

Two tasks, each through the framework's own experiment configs with only ``model.rosa.injection`` (and the seed)
changed:

- ``mqar``: ``experiment=learn_mqar`` (2 layers, hidden 64, window 32 in both layers, ROSA on both with the
  recommended inputs: M = 8, kv_shift, qk_tied), multi-query associative recall with the values ~200 tokens before
  their queries; validation answer accuracy. Three seeds per injection.
- ``stdlib``: ``experiment=study_stdlib_rosa_shift`` (2 layers, hidden 64, window 64, the same branch options) on
  the Python standard library's sources; next-token perplexity on held-out rows by position, beyond the window
  (t >= 64) and within it, beside the window alone (``study_stdlib_window``). One seed.

Each arm's run folder (``logs/injection_point/<arm>/``) and its ``result.json`` are reused when the command runs
again. Results (``results.json``, ``results.md``, ``curves.png``) go to this folder or ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import hydra
import torch

from experiments.harness import runs
from experiments.harness.evaluate import loss_by_position
from experiments.harness.report import line_panels, markdown_table, perplexity, write_json
from experiments.harness.runs import Job, run_pool, stopwatch
from rosa_lightning.data.stdlib_corpus import TokenChunkDataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
INJECTIONS = ("post_attn", "post_mlp")
SMOKE_FILES = ["bisect.py", "colorsys.py", "heapq.py", "copy.py", "glob.py", "shlex.py", "abc.py", "fnmatch.py",
               "string.py", "queue.py", "sched.py", "textwrap.py", "token.py", "keyword.py"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps per arm on tiny data (pipeline check)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per injection on mqar")
    p.add_argument("--out", type=Path, default=HERE, help="where results.* and the plot are written")
    p.add_argument("--logs", type=Path, default=ROOT / "logs" / "injection_point", help="run folders")
    return p.parse_args(argv)


def settings(smoke: bool, logs: Path) -> dict:
    common = ["logger=csv", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
              "+callbacks.retrieval_runtime.torch_threads=1"]
    if not smoke:
        return {"smoke": False, "window": 64, "seq_len": 512, "eval_batches": None,
                "mqar": common, "stdlib": common}
    tiny = ["trainer.max_steps=3", "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1"]
    return {"smoke": True, "window": 16, "seq_len": 128, "eval_batches": 1,
            "mqar": [*common, *tiny, "data.source.num_train=64", "data.source.num_val=16", "data.batch_size=4"],
            "stdlib": [*common, *tiny, "data.seq_len=128", "model.rosa.window=16", "data.batch_size=2",
                       "callbacks.rosa_grad_norms.log_every_n_steps=1", "data.source.corpus.vocab_size=300",
                       "data.source.corpus.held_out_fraction=0.3", "model.backbone.vocab_size=300",
                       f"data.source.corpus.tokenizer_path={logs}/stdlib_bpe_smoke.json",
                       "+data.source.corpus.files=[" + ",".join(SMOKE_FILES) + "]"]}


def run_arm(name: str, experiment: str, overrides: list[str], out_dir: str, task: str, seq_len: int,
            window: int, eval_batches: int | None) -> dict:
    """Train one arm (or reuse it), then read its validation curve; stdlib arms are also scored by position."""
    logging.getLogger("lightning").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    out = Path(out_dir)
    cached = out / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    cfg = runs.compose(experiment, overrides, out)
    _, module, train_s, _ = runs.train_or_reuse(cfg, out)
    rows = runs.read_metrics(out)
    result: dict = {"arm": name, "experiment": experiment, "overrides": overrides, "train_s": train_s,
                    "injection": cfg.model.rosa.injection, "seed": int(cfg.seed),
                    "curves": {k: runs.curve(rows, k) for k in ("val/answer_acc", "val/loss")}}
    if task == "stdlib":
        docs = hydra.utils.instantiate(cfg.data.source).corpus.documents("val")
        loss, n = loss_by_position(module, TokenChunkDataset(docs, seq_len), batch_size=8, max_batches=eval_batches)
        losses = loss.tolist()
        result.update(rows=n, ppl_all=perplexity(losses), ppl_within=perplexity(losses[:window]),
                      ppl_beyond=perplexity(losses[window:]))
    cached.write_text(json.dumps(result))
    return result


def build_jobs(s: dict, seeds: int, logs: Path) -> dict[str, Job]:
    jobs: dict[str, Job] = {}
    for injection in INJECTIONS:
        for seed in range(seeds):
            name = f"mqar_{injection}_seed{seed}"
            jobs[name] = Job(run_arm, dict(name=name, experiment="learn_mqar", task="mqar",
                                           overrides=[*s["mqar"], f"model.rosa.injection={injection}", f"seed={seed}"],
                                           out_dir=str(logs / name), seq_len=s["seq_len"], window=s["window"],
                                           eval_batches=s["eval_batches"]))
        name = f"stdlib_{injection}"
        jobs[name] = Job(run_arm, dict(name=name, experiment="study_stdlib_rosa_shift", task="stdlib",
                                       overrides=[*s["stdlib"], f"model.rosa.injection={injection}"],
                                       out_dir=str(logs / name), seq_len=s["seq_len"], window=s["window"],
                                       eval_batches=s["eval_batches"]))
    jobs["stdlib_window"] = Job(run_arm, dict(name="stdlib_window", experiment="study_stdlib_window", task="stdlib",
                                              overrides=s["stdlib"], out_dir=str(logs / "stdlib_window"),
                                              seq_len=s["seq_len"], window=s["window"], eval_batches=s["eval_batches"]))
    return jobs


def summarize(results: dict, seeds: int) -> dict:
    mqar = {}
    for injection in INJECTIONS:
        curves = [results[f"mqar_{injection}_seed{k}"]["curves"]["val/answer_acc"] for k in range(seeds)]
        finals = [c[1][-1] for c in curves]
        mqar[injection] = {"final_acc": finals, "mean": sum(finals) / len(finals), "min": min(finals),
                           "first_step": curves[0][0][0], "first_acc_mean": sum(c[1][0] for c in curves) / seeds,
                           "max": max(finals), "train_min": sum(results[f"mqar_{injection}_seed{k}"]["train_s"]
                                                                for k in range(seeds)) / seeds / 60}
    stdlib = {name[len("stdlib_"):]: {k: results[name][k] for k in ("ppl_all", "ppl_within", "ppl_beyond", "rows")}
              for name in results if name.startswith("stdlib_")}
    return {"mqar": mqar, "stdlib": stdlib}


def write_report(results: dict, summary: dict, s: dict, seeds: int, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    W = s["window"]
    first = next(iter(summary["mqar"].values()))["first_step"]
    md = [f"MQAR (`experiment=learn_mqar`), validation answer accuracy at the last step, {seeds} seeds, and its mean "
          f"at the first validation (step {first}):\n\n",
          markdown_table(["injection", "mean", "min", "max", "per seed", f"mean at step {first}", "train min (mean)"],
                         [[inj, r["mean"], r["min"], r["max"], ", ".join(f"{a:.3f}" for a in r["final_acc"]),
                           r["first_acc_mean"], r["train_min"]] for inj, r in summary["mqar"].items()], 3),
          f"\nStandard library (`experiment=study_stdlib_rosa_shift`, window {W}), held-out perplexity:\n\n",
          markdown_table(["arm", "ppl (all)", f"ppl t < {W}", f"ppl t ≥ {W}", "rows"],
                         [[arm, r["ppl_all"], r["ppl_within"], r["ppl_beyond"], r["rows"]]
                          for arm, r in summary["stdlib"].items()], 2)]
    text = "".join(md)
    (out / "results.md").write_text(text)
    write_json(out / "results.json", {"settings": {k: v for k, v in s.items() if k not in ("mqar", "stdlib")},
                                      "summary": summary, "runs": results})
    series = {f"{inj} seed {k}": tuple(results[f"mqar_{inj}_seed{k}"]["curves"]["val/answer_acc"])
              for inj in INJECTIONS for k in range(seeds)}
    stdlib_curves = {arm: tuple(results[f"stdlib_{arm}"]["curves"]["val/loss"]) for arm in summary["stdlib"]}
    line_panels(out / "curves.png", [
        {"title": "MQAR: validation answer accuracy", "xlabel": "step", "ylabel": "accuracy", "series": series},
        {"title": "stdlib: validation loss", "xlabel": "step", "ylabel": "loss", "series": stdlib_curves}], ncols=2)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    logs = args.logs.resolve()
    seeds = 1 if args.smoke else args.seeds
    s = settings(args.smoke, logs)
    clock = stopwatch()
    results = run_pool(build_jobs(s, seeds, logs), procs=1)
    summary = summarize(results, seeds)
    print(write_report(results, summary, s, seeds, args.out))
    print(f"study finished in {clock() / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
