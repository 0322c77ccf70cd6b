"""Real text: perplexity of global attention, sliding window, window + ROSA (and window + token channel) on the
Python standard library's sources, overall and by token position, on a fixed set of held-out files.

    python -m experiments.stdlib_perplexity.run             # the full study (about 30 min on 2 CPU cores)
    python -m experiments.stdlib_perplexity.run --smoke     # seconds-long pipeline check (tests/studies)

Every arm is a config, ``conf/experiment/study_stdlib_<arm>.yaml``, trained through ``train(cfg)`` exactly as
``python train.py experiment=study_stdlib_<arm>`` would; this script adds the CSV logger, one torch thread per
worker process and the evaluation after training: next-token loss at every position of every held-out row, at the
training length L = 512 and at 2L. Run logs go to ``logs/study_stdlib/<arm>/``; results to this folder (or --out).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import hydra
import torch

from experiments.harness import runs
from experiments.harness.diagnostics import grad_norms_on_batch, retrieval_diagnostics
from experiments.harness.evaluate import batches, loss_by_position
from experiments.harness.report import binned_perplexity, line_panels, markdown_table, perplexity, write_csv, write_json
from experiments.harness.runs import Job, check_choices, run_pool, stopwatch
from rosa_lightning.data.stdlib_corpus import TokenChunkDataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

ARMS = ["global", "window", "rosa", "rosa_shift", "token"]
LABELS = {"global": "global attention", "window": "window only", "rosa": "window + ROSA",
          "rosa_shift": "window + ROSA (M=8, K/V shifted, Q/K tied)", "token": "window + token channel"}
BIN = 32  # tokens per bin of the perplexity-by-position curve


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps per arm on a few files (pipeline check)")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    p.add_argument("--procs", type=int, default=None, help="worker processes (default: 2, smoke: 1)")
    p.add_argument("--out", type=Path, default=HERE, help="where results.* and the plots are written")
    p.add_argument("--logs", type=Path, default=ROOT / "logs" / "study_stdlib", help="run folders")
    return p.parse_args(argv)


SMOKE_FILES = ["bisect.py", "colorsys.py", "keyword.py", "heapq.py", "copy.py", "glob.py", "shlex.py", "abc.py",
               "fnmatch.py", "string.py", "queue.py", "sched.py", "textwrap.py", "this.py", "token.py"]


def settings(smoke: bool, logs: Path) -> dict:
    if smoke:
        return {"seq_len": 128, "window": 16, "steps": 4, "max_eval_batches": 2,
                "extra": ["trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
                          "callbacks.rosa_grad_norms.log_every_n_steps=1", "data.source.corpus.vocab_size=300",
                          "data.source.corpus.held_out_fraction=0.3", "model.backbone.vocab_size=300",
                          f"data.source.corpus.tokenizer_path={logs}/stdlib_bpe_smoke.json",
                          "+data.source.corpus.files=[" + ",".join(SMOKE_FILES) + "]"]}
    return {"seq_len": 512, "window": 64, "steps": 400, "max_eval_batches": None, "extra": []}


def run_arm(arm: str, overrides: list[str], out_dir: str, seq_len: int, window: int,
            max_eval_batches: int | None) -> dict:
    """Train one arm (worker process), then score every held-out row at L and 2L by position."""
    logging.getLogger("lightning").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    ov = [*overrides, "logger=csv", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
          "+callbacks.retrieval_runtime.torch_threads=1"]
    cfg = runs.compose(f"study_stdlib_{arm}", ov, Path(out_dir))
    cached = Path(out_dir) / "result.json"
    if cached.is_file():  # this arm finished in an earlier invocation with the same settings
        return json.loads(cached.read_text())
    _, module, train_s, reused = runs.train_or_reuse(cfg, Path(out_dir))
    result: dict = {"arm": arm, "overrides": overrides, "window": cfg.model.rosa.window, "train_s": train_s,
                    "reused_run": reused}
    corpus = hydra.utils.instantiate(cfg.data.source).corpus
    docs = corpus.documents("val")
    clock = runs.stopwatch()
    result["held_out_files"] = len(corpus.split_files("val"))
    for factor in (1, 2):
        data = TokenChunkDataset(docs, seq_len * factor)
        loss, rows = loss_by_position(module, data, batch_size=max(1, 8 // factor), max_batches=max_eval_batches)
        result[f"loss_by_position_{factor}L"] = loss.tolist()
        result[f"rows_{factor}L"] = rows
    val = TokenChunkDataset(docs, seq_len)
    result["diagnostics"] = retrieval_diagnostics(module, val, batch_size=8, max_batches=2, slots=False)
    result["grad_norms_final"] = grad_norms_on_batch(module, next(batches(val, 8)))
    result["eval_s"] = clock()
    rows = runs.read_metrics(Path(out_dir))
    result["curves"] = {key: runs.curve(rows, key) for key in sorted({k for r in rows for k in r})
                        if key.startswith(("val/loss", "train/loss", "rosa_grad/"))}
    cached.write_text(json.dumps(result))
    return result


def build_jobs(arms: list[str], s: dict, logs: Path) -> dict:
    jobs = {}
    for arm in sorted(arms, key=lambda a: a not in ("rosa", "global")):  # the slowest first
        ov = [f"data.seq_len={s['seq_len']}", f"trainer.max_steps={s['steps']}", *s["extra"]]
        if arm != "global":  # the global arm keeps model.rosa.window=null from its config
            ov.append(f"model.rosa.window={s['window']}")
        jobs[arm] = Job(run_arm, dict(arm=arm, overrides=ov, out_dir=str(logs / arm), seq_len=s["seq_len"],
                                      window=s["window"], max_eval_batches=s["max_eval_batches"]))
    return jobs


def summarize(results: dict, s: dict) -> dict:
    """Perplexities per arm: overall, inside / beyond the window, by position bucket, and at 2L."""
    L, W = s["seq_len"], s["window"]
    edges = [0, W, 2 * W, L // 2, L - 1]
    out = {}
    for arm, r in results.items():
        l1, l2 = r["loss_by_position_1L"], r["loss_by_position_2L"]
        out[arm] = {
            "overall_L": perplexity(l1), "within_window": perplexity(l1[:W]), "beyond_window": perplexity(l1[W:]),
            "buckets": {f"{lo}-{hi}": perplexity(l1[lo:hi]) for lo, hi in zip(edges[:-1], edges[1:])},
            "overall_2L": perplexity(l2), "beyond_L_at_2L": perplexity(l2[L - 1:]),
            "rows_L": r["rows_1L"], "rows_2L": r["rows_2L"],
        }
    return out


def write_report(results: dict, summary: dict, s: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    L, W = s["seq_len"], s["window"]
    bucket_names = list(next(iter(summary.values()))["buckets"])
    header = ["arm", "ppl (all positions)", f"ppl t < {W}", f"ppl t ≥ {W} (beyond window)",
              *[f"ppl t ∈ [{b.replace('-', ', ')})" for b in bucket_names], f"ppl at 2L (all)",
              f"ppl t ≥ {L} at 2L", "train min"]
    rows = [[LABELS[a], v["overall_L"], v["within_window"], v["beyond_window"], *v["buckets"].values(),
             v["overall_2L"], v["beyond_L_at_2L"], results[a]["train_s"] / 60] for a, v in summary.items()]
    md = [f"Held-out: {results[next(iter(results))]['held_out_files']} files, {summary[next(iter(summary))]['rows_L']} "
          f"rows of {L} tokens ({summary[next(iter(summary))]['rows_2L']} rows of {2 * L}); t = index of the "
          f"position that predicts the next token (t + 1 tokens of history).\n\n", markdown_table(header, rows, 2)]
    if "global" in summary:
        g = summary["global"]["beyond_window"]
        md.append(f"\nTarget (window + ROSA perplexity beyond the window ≤ global attention's, {g:.2f}):\n\n")
        for arm in ("rosa", "rosa_shift"):
            if arm in summary:
                r = summary[arm]["beyond_window"]
                md.append(f"- {LABELS[arm]}: {r:.2f} ({'met' if r <= g else 'missed'})\n")
        if "window" in summary:
            md.append(f"- for reference, window only: {summary['window']['beyond_window']:.2f}\n")
    diag = [[a, layer, d["valid_tau"], *[results[a]["grad_norms_final"].get(f"l{layer[5:]}_{k}") for k in
                                         ("q", "k", "v", "e1", "out")]]
            for a in results for layer, d in results[a]["diagnostics"].items()]
    if diag:
        md.append("\nPer-layer diagnostics (held-out rows; gradient norms on one batch of 8 rows after training):\n\n")
        md.append(markdown_table(["arm", "layer", "valid tau", "|dW_q|", "|dW_k|", "|dW_v|", "|de1|", "|dW_out|"],
                                 diag, 4))
    text = "".join(md)
    (out / "results.md").write_text(text)
    write_csv(out / "results.csv", ["arm", "t", "loss_L", "loss_2L"],
              [[a, t, r["loss_by_position_1L"][t] if t < len(r["loss_by_position_1L"]) else None,
                r["loss_by_position_2L"][t]] for a, r in results.items() for t in range(len(r["loss_by_position_2L"]))])
    write_json(out / "results.json", {"settings": {k: v for k, v in s.items() if k != "extra"}, "summary": summary,
                                      "runs": results})

    def binned(losses: list[float]) -> tuple[list[int], list[float]]:
        return binned_perplexity(losses, BIN)

    line_panels(out / "perplexity_vs_position.png", [
        {"title": f"held-out perplexity by position (rows of {L})", "xlabel": "position t", "ylabel": "perplexity",
         "vline": W, "series": {LABELS[a]: binned(r["loss_by_position_1L"]) for a, r in results.items()}},
        {"title": f"rows of {2 * L} (trained at {L})", "xlabel": "position t", "ylabel": "perplexity",
         "vline": L, "series": {LABELS[a]: binned(r["loss_by_position_2L"]) for a, r in results.items()}},
    ], ncols=2)
    curves = [{"title": f"{split} loss", "xlabel": "step", "ylabel": "loss",
               "series": {LABELS[a]: tuple(r["curves"].get(f"{split}/loss", ([], []))) for a, r in results.items()}}
              for split in ("train", "val")]
    line_panels(out / "learning_curves.png", curves, ncols=2)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    check_choices("--arms", arms, ARMS)
    s = settings(args.smoke, args.logs.resolve())
    clock = stopwatch()
    results = run_pool(build_jobs(arms, s, args.logs.resolve()), procs=args.procs or (1 if args.smoke else 2))
    results = {a: results[a] for a in ARMS if a in results}
    summary = summarize(results, s)
    print(write_report(results, summary, s, args.out))
    print(f"study finished in {clock() / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
