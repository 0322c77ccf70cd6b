"""Can the ROSA branch learn MQAR from scratch at tiny scale, token channel off? Which options make it learn?

Trains MQAR arms (tiny Qwen3, every layer windowed with W = 32, ROSA on every layer, T = 256, 8 pairs, keys and
values beyond the window, random filler, token channel off): the published reference and option combinations
(``RosaConfig.kv_shift``, ``qk_tied``, ``center_u``, ``bits``; the study-local ``k_copy_q`` and ``qk_lr_scale``
ablations). Then runs the finite-difference harness (``rosa_lightning.modeling.finite_diff``) on the best arm's
trained model and on its untrained init, scoring the published gradient and the named gradient options on the
same probes. Writes ``results.json``, ``results.md`` (tables) and ``curves.png`` under ``--out``.

    python experiments/branch_learning/run.py                  # every arm + harness (~30 CPU-minutes)
    python experiments/branch_learning/run.py --arms best --steps 150 --no-harness
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from learn import Arm, build, make_task, train_arm  # noqa: E402

from rosa_lightning.data.synthetic import SyntheticDataset  # noqa: E402
from rosa_lightning.modeling import GradOptions, rosa_layers  # noqa: E402
from rosa_lightning.modeling.finite_diff import (STREAMS, randomize_values, StreamAgreement, estimates,  # noqa: E402
                                                 finite_differences, logit_grads, sample_probes)

BEST = {"bits": 8, "kv_shift": True, "qk_tied": True}
ARMS = {
    "reference": Arm("reference"),
    "reference_m8": Arm("reference_m8", {"bits": 8}),
    "kv_shift_m8": Arm("kv_shift_m8", {"bits": 8, "kv_shift": True}),
    "kv_shift_kcopy_m8": Arm("kv_shift_kcopy_m8", {"bits": 8, "kv_shift": True}, k_copy_q=True),
    "shift_tied_m4": Arm("shift_tied_m4", {"kv_shift": True, "qk_tied": True}),
    "best": Arm("best", dict(BEST)),
    "best_center": Arm("best_center", {**BEST, "center_u": "causal_mean"}),
    "best_frozen_qk": Arm("best_frozen_qk", dict(BEST), qk_lr_scale=0.0),
    "best_layer1_only": Arm("best_layer1_only", {**BEST, "rosa_layers": [1]}),
    "best_h128_l4": Arm("best_h128_l4", dict(BEST), hidden=128, layers=4),
    "best_matched_e0": Arm("best_matched_e0", {**BEST, "k_credit": "matched", "cf_e0_term": True}),
    "best_seed1": Arm("best_seed1", dict(BEST), seed_offset=1),
    "best_seed2": Arm("best_seed2", dict(BEST), seed_offset=2),
}
GRAD_OPTIONS = {
    "reference": GradOptions(),
    "k_credit=matched": GradOptions(k_credit="matched"),
    "cf_field=hard": GradOptions(field="hard"),
    "matched+hard": GradOptions(field="hard", k_credit="matched"),
    "e0_term": GradOptions(e0_term=True),
    "matched+e0_term": GradOptions(k_credit="matched", e0_term=True),
    "matched+hard+e0_term": GradOptions(field="hard", k_credit="matched", e0_term=True),
}


def harness(model, task, num_probes: int, seed: int, scored: str = "answers") -> dict:
    """Per ROSA layer and gradient option: Pearson / sign agreement / coverage of estimate vs exact difference."""
    ids_batch = torch.utils.data.default_collate([SyntheticDataset(task, 4, seed=30_000)[i] for i in range(4)])
    ids = ids_batch["input_ids"]
    labels = ids_batch["labels"] if scored == "answers" else ids

    def loss_fn(m):
        return m(input_ids=ids, labels=labels).loss

    model.eval()
    out = {}
    for li, layer in enumerate(rosa_layers(model)):
        lg = logit_grads(model, layer, loss_fn)
        probes = sample_probes(lg, num_probes, seed=seed)
        fds = {x: finite_differences(model, layer, loss_fn, lg, x, probes[x]) for x in STREAMS}
        out[f"layer{li}"] = {}
        for name, opts in GRAD_OPTIONS.items():
            grads = lg.grads(opts)
            out[f"layer{li}"][name] = {
                x: StreamAgreement(x, fds[x], estimates(lg, grads, x, probes[x]), probes[x]).summary() for x in STREAMS}
            out[f"layer{li}"][name]["raw"] = {x: [fds[x].tolist(), estimates(lg, grads, x, probes[x]).tolist()]
                                             for x in STREAMS}
    return out


def fmt(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.2f}"


def tables(results: dict) -> str:
    lines = ["## MQAR arms (token channel off, T = 256, W = 32, 8 pairs)", "",
             "| arm | options | steps | seconds | acc T=256 | acc T=1024 | first step >= 90% train acc | "
             "right-slot L0 init -> end | right-slot L1 init -> end |", "|" + "---|" * 9]
    for name, r in results["arms"].items():
        arm, curve, final = r["arm"], r["curve"], r["final"]
        opts = ", ".join(f"{k}={v}" for k, v in arm["rosa"].items()) or "published (M=4)"
        if arm.get("k_copy_q"):
            opts += ", K init = Q (untied)"
        if arm["qk_lr_scale"] != 1.0:
            opts += f", Q/K lr x{arm['qk_lr_scale']}"
        if arm.get("seed_offset"):
            opts += f", seed +{arm['seed_offset']}"
        if (arm["hidden"], arm["layers"]) != (64, 2):
            opts += f", hidden {arm['hidden']}, {arm['layers']} layers"
        first = next((c["step"] for c in curve if c["train_acc"] >= 0.9), None)
        rs0 = curve[0]["right_slot"]
        rs1 = curve[-1]["right_slot"]
        cells = [f"{fmt(a)} -> {fmt(b)}" for a, b in zip(rs0, rs1)] + ["-"] * (2 - len(rs0))
        lines.append(f"| {name} | {opts} | {final['steps']} | {final['seconds']:.0f} | {final['acc_x1']:.3f} | "
                     f"{final['acc_x4']:.3f} | {first if first else 'never'} | " + " | ".join(cells[:2]) + " |")
    if "harness" in results:
        lines += ["", "## Finite differences (best arm's model; loss = MQAR answers of 4 held-out sequences)", "",
                  "| state | layer | gradient option | Q Pearson | K Pearson | V Pearson | Q sign | K sign | V sign | "
                  "Q cov | K cov | V cov | informative Q/K/V |", "|" + "---|" * 13]
        for state, per_layer in results["harness"].items():
            for layer, per_opt in per_layer.items():
                for name, s in per_opt.items():
                    cells = [fmt(s[x][m]) for m in ("pearson", "sign_agreement", "coverage") for x in STREAMS]
                    inf = "/".join(str(s[x]["informative"]) for x in STREAMS)
                    lines.append(f"| {state} | {layer[5:]} | {name} | " + " | ".join(cells) + f" | {inf} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    colors = plt.get_cmap("tab20").colors
    for i, (name, r) in enumerate(results["arms"].items()):
        steps = [c["step"] for c in r["curve"]]
        ls = "-" if name.startswith("best") else "--"
        (line,) = axes[0].plot(steps, [c["train_acc"] for c in r["curve"]], label=name, color=colors[i % 20], ls=ls)
        axes[1].plot(steps, [c["right_slot"][0] for c in r["curve"]], color=line.get_color(), ls=ls, label=name)
        axes[2].plot([c["seconds"] / 60 for c in r["curve"]], [c["train_acc"] for c in r["curve"]],
                     color=line.get_color(), ls=ls, label=name)
    axes[0].set(xlabel="step (batch 16)", ylabel="train answer accuracy", title="MQAR answer accuracy")
    axes[1].set(xlabel="step", ylabel="right-slot rate", title="right-slot retrieval rate, first ROSA layer")
    axes[2].set(xlabel="CPU minutes (1 thread, shared machine)", ylabel="train answer accuracy",
                title="accuracy vs wall clock")
    axes[2].axhline(0.9, ls="--", c="k", lw=0.6)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--arms", nargs="*", default=list(ARMS), help=f"subset of {list(ARMS)}")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-num", type=int, default=64, help="held-out sequences per evaluated length")
    ap.add_argument("--probes", type=int, default=128, help="harness bits per stream and layer")
    ap.add_argument("--no-harness", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = make_task(seq_len=args.seq_len)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = {"args": vars(args), "arms": {}}
    models = {}
    for name in args.arms:
        r = train_arm(ARMS[name], task, args.steps, seed=args.seed, batch_size=args.batch_size,
                      log_every=args.log_every, eval_num=args.eval_num,
                      on_log=lambda row, n=name: print(n, row, flush=True))
        models[name] = r.pop("model")
        results["arms"][name] = r
        print(name, "final", r["final"], f"({time.time() - t0:.0f}s)", flush=True)
    if not args.no_harness:
        best = models.get("best")
        if best is None:
            best = train_arm(ARMS["best"], task, args.steps, seed=args.seed, batch_size=args.batch_size,
                             log_every=args.log_every, eval_num=8)["model"]
        untrained = build(ARMS["best"], task.vocab_size, args.seed)
        randomize_values(untrained, 0.5, args.seed)
        results["harness"] = {"trained": harness(best, task, args.probes, args.seed),
                              "untrained": harness(untrained, task, args.probes, args.seed)}
        print(f"harness done ({time.time() - t0:.0f}s)", flush=True)
    results["seconds"] = time.time() - t0
    raw_free = json.loads(json.dumps(results))
    for per_layer in raw_free.get("harness", {}).values():
        for per_opt in per_layer.values():
            for s in per_opt.values():
                s.pop("raw", None)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(tables(raw_free))
    if not args.no_plot:
        plot(results, out / "curves.png")
    print(tables(raw_free))
    return results


if __name__ == "__main__":
    main()
