"""Can the ROSA branch learn MQAR from scratch at tiny scale, token channel off? Which options make it learn?

Trains MQAR arms (tiny Qwen3, every layer windowed with W = 32, ROSA on every layer, T = 256, 8 pairs, keys and
values beyond the window, random filler, token channel off): the published reference and option combinations
(``RosaConfig.kv_shift``, ``qk_tied``, ``center_u``, ``bits``; the study-local ``k_copy_q`` and ``qk_lr_scale``
ablations). Then runs the finite-difference probes (``rosa_lightning.modeling.finite_diff``, scored by
``experiments.harness.statistics``) on the best arm's trained model and on its untrained init, scoring the
published gradient and the named gradient options on the same probes. Writes ``results.json``, ``results.md``
(tables) and ``curves.png`` under ``--out``.

    python -m experiments.branch_learning.run                  # every arm + harness (~30 CPU-minutes)
    python -m experiments.branch_learning.run --arms best --steps 150 --no-harness
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from experiments.branch_learning.learn import Arm, build, make_task, train_arm
from experiments.harness.runs import check_choices
from experiments.harness.statistics import StreamAgreement
from rosa_lightning.data.synthetic import SyntheticDataset
from rosa_lightning.modeling import GradOptions, rosa_layers
from rosa_lightning.modeling.finite_diff import (STREAMS, estimates, finite_differences, logit_grads,
                                                 randomize_values, sample_probes)

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
    "best_layer1_distill": Arm("best_layer1_distill", {**BEST, "rosa_layers": [1]}, distill_steps=100,
                               distill_weight=10.0),
    "best_layer1_aux": Arm("best_layer1_aux", {**BEST, "rosa_layers": [1]}, distill_weight=10.0),
    "best_relaxed": Arm("best_relaxed", {**BEST, "grad_mode": "relaxed"}),
    "best_relaxed_seed1": Arm("best_relaxed_seed1", {**BEST, "grad_mode": "relaxed"}, seed_offset=1),
    "best_relaxed_seed2": Arm("best_relaxed_seed2", {**BEST, "grad_mode": "relaxed"}, seed_offset=2),
    "kv_shift_m8_relaxed": Arm("kv_shift_m8_relaxed", {"bits": 8, "kv_shift": True, "grad_mode": "relaxed"}),
    "reference_relaxed": Arm("reference_relaxed", {"grad_mode": "relaxed"}),
    "reference_m8_curriculum": Arm("reference_m8_curriculum", {"bits": 8}, curriculum_steps=150),
    "shift_tied_m4_curriculum": Arm("shift_tied_m4_curriculum", {"kv_shift": True, "qk_tied": True},
                                    curriculum_steps=150),
}
# repeats run by a second command (README), not by the default run that wrote results.md
FOLLOW_UP = ("best_relaxed_seed1", "best_relaxed_seed2")
DEFAULT_ARMS = [a for a in ARMS if a not in FOLLOW_UP]
HARNESS_SEEDS = {"best": 0, "best_seed1": 1, "best_seed2": 2}  # arms whose models the harness probes
LEARNING_STEP = 50  # default of --learning-step: the "learning" state, a snapshot while accuracy still rises
GRAD_OPTIONS = {
    "reference": GradOptions(),
    "k_credit=matched": GradOptions(k_credit="matched"),
    "cf_field=hard": GradOptions(field="hard"),
    "e0_term": GradOptions(e0_term=True),
    "matched+e0_term": GradOptions(k_credit="matched", e0_term=True),
    "hard+e0_term": GradOptions(field="hard", e0_term=True),
    "matched+hard+e0_term": GradOptions(field="hard", k_credit="matched", e0_term=True),
    "relaxed": GradOptions(mode="relaxed"),
}


def harness(model, task, num_probes: int, seed: int) -> dict:
    """Per ROSA layer: the probes' exact differences, first-order effects and every option's estimates (raw)."""
    ids_batch = torch.utils.data.default_collate([SyntheticDataset(task, 4, seed=30_000)[i] for i in range(4)])
    ids, labels = ids_batch["input_ids"], ids_batch["labels"]

    def loss_fn(m):  # cross-entropy of the MQAR answers of 4 held-out sequences
        return m(input_ids=ids, labels=labels).loss

    model.eval()
    out = {}
    for li, layer in enumerate(rosa_layers(model)):
        lg = logit_grads(model, layer, loss_fn)
        probes = sample_probes(lg, num_probes, seed=seed)
        raw = {"loss": lg.loss}
        for x in STREAMS:
            fd, lin = finite_differences(model, layer, loss_fn, lg, x, probes[x], first_order=True)
            raw[x] = {"fd": fd.tolist(), "first_order": lin.tolist(),
                      "est": {name: estimates(lg, lg.grads(o), x, probes[x]).tolist()
                              for name, o in GRAD_OPTIONS.items()}}
        out[f"layer{li}"] = raw
    return out


def agreement(raws: list, stream: str, option: str) -> StreamAgreement:
    """One StreamAgreement over the probes of several harness runs (pooled)."""
    cat = lambda key: np.concatenate([np.asarray(r[stream][key], dtype=float) for r in raws])  # noqa: E731
    est = np.concatenate([np.asarray(r[stream]["est"][option], dtype=float) for r in raws])
    return StreamAgreement(stream, fd=cat("fd"), est=est, where=np.zeros((len(est), 3), dtype=np.int64),
                           first_order=cat("first_order"))


def harness_summary(per_seed: dict) -> dict:
    """{state: {layer: {option: {stream: summary (pooled over seeds)}, "per_seed": ...}}} from the raw runs."""
    out = {}
    for state, seeds in per_seed.items():
        out[state] = {}
        for layer in next(iter(seeds.values())):
            raws = [seeds[k][layer] for k in seeds]
            out[state][layer] = {name: {x: agreement(raws, x, name).summary() for x in STREAMS}
                                 for name in GRAD_OPTIONS}
            out[state][layer]["per_seed"] = {
                name: {x: [agreement([r], x, name).pearson for r in raws] for x in STREAMS} for name in GRAD_OPTIONS}
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
        if arm.get("distill_steps") or arm.get("distill_weight"):
            opts += (f", hash teacher: {arm['distill_steps']} warm-start steps, "
                     f"aux weight {arm['distill_weight']:g}")
        if arm.get("curriculum_steps"):
            opts += f", filler curriculum T {arm['curriculum_start']} -> full over {arm['curriculum_steps']} steps"
        if (arm["hidden"], arm["layers"]) != (64, 2):
            opts += f", hidden {arm['hidden']}, {arm['layers']} layers"
        first = next((c["step"] for c in curve if c["train_acc"] >= 0.9), None)
        rs0 = curve[0]["right_slot"]
        rs1 = curve[-1]["right_slot"]
        cells = [f"{fmt(a)} -> {fmt(b)}" for a, b in zip(rs0, rs1)] + ["-"] * (2 - len(rs0))
        lines.append(f"| {name} | {opts} | {final['steps']} | {final['seconds']:.0f} | {final['acc_x1']:.3f} | "
                     f"{final['acc_x4']:.3f} | {first if first else 'never'} | " + " | ".join(cells[:2]) + " |")
    if "harness" in results:
        h = results["harness"]
        lines += ["", "## Finite differences: agreement of each gradient option with the exact loss difference", "",
                  f"Pooled over the models of {', '.join(results['harness_arms'])} (one per seed); "
                  "Pearson with its 90% bootstrap interval; loss = MQAR answers of 4 held-out sequences.", "",
                  "| state | layer | gradient option | Q Pearson | K Pearson | V Pearson | Q/K/V Spearman | "
                  "Q/K/V sign | Q/K/V coverage | Q/K/V est vs first order |", "|" + "---|" * 10]
        for state, per_layer in h.items():
            for layer, per_opt in per_layer.items():
                for name in GRAD_OPTIONS:
                    s_ = per_opt[name]
                    cells = [f"{fmt(s_[x]['pearson'])} [{fmt(s_[x]['pearson_lo'])}, {fmt(s_[x]['pearson_hi'])}]"
                             for x in STREAMS]
                    for m in ("spearman", "sign_agreement", "coverage", "est_vs_first_order"):
                        cells.append("/".join(fmt(s_[x][m]) for x in STREAMS))
                    lines.append(f"| {state} | {layer[5:]} | {name} | " + " | ".join(cells) + " |")
        lines += ["", "### Ceiling: Pearson(exact difference, first-order effect of the flip on the injection)", "",
                  "| state | layer | Q ceiling | K ceiling | V ceiling | informative probes Q/K/V |", "|" + "---|" * 6]
        for state, per_layer in h.items():
            for layer, per_opt in per_layer.items():
                s_ = per_opt["reference"]
                lines.append(f"| {state} | {layer[5:]} | " + " | ".join(fmt(s_[x]["ceiling"]) for x in STREAMS)
                             + " | " + "/".join(str(s_[x]["informative"]) for x in STREAMS) + " |")
        lines += ["", "### Per-seed Pearson, layer 0", "",
                  "| state | gradient option | Q | K | V |", "|" + "---|" * 5]
        for state, per_layer in h.items():
            per_seed = per_layer["layer0"]["per_seed"]
            for name in ("reference", "matched+e0_term", "hard+e0_term", "matched+hard+e0_term", "relaxed"):
                lines.append(f"| {state} | {name} | " + " | ".join(
                    ", ".join(fmt(v) for v in per_seed[name][x]) for x in STREAMS) + " |")
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
    ap.add_argument("--arms", nargs="*", default=DEFAULT_ARMS, help=f"subset of {list(ARMS)}")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-num", type=int, default=64, help="held-out sequences per evaluated length")
    ap.add_argument("--probes", type=int, default=128, help="harness bits per stream and layer")
    ap.add_argument("--no-harness", action="store_true")
    ap.add_argument("--learning-step", type=int, default=LEARNING_STEP,
                    help="step of the harness's 'learning' snapshot (clamped to --steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    check_choices("--arms", args.arms, list(ARMS))
    torch.set_num_threads(args.threads)
    task = make_task(seq_len=args.seq_len)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    snap = (min(args.learning_step, args.steps),)
    results = {"args": vars(args), "arms": {}}
    models, snapshots = {}, {}
    for name in args.arms:
        r = train_arm(ARMS[name], task, args.steps, seed=args.seed, batch_size=args.batch_size,
                      log_every=args.log_every, eval_num=args.eval_num,
                      on_log=lambda row, n=name: print(n, row, flush=True),
                      snapshots=snap if name in HARNESS_SEEDS else ())
        models[name] = r.pop("model")
        snapshots[name] = r.pop("snapshots")
        results["arms"][name] = r
        print(name, "final", r["final"], f"({time.time() - t0:.0f}s)", flush=True)
    if not args.no_harness:
        per_seed = {"untrained": {}, "learning": {}, "trained": {}}
        harness_arms = [a for a in HARNESS_SEEDS if a in models] or ["best"]
        for name in harness_arms:
            arm = ARMS[name]
            if name not in models:
                r = train_arm(arm, task, args.steps, seed=args.seed, batch_size=args.batch_size,
                              log_every=args.log_every, eval_num=8, snapshots=snap)
                models[name], snapshots[name] = r["model"], r["snapshots"]
            hseed = args.seed + arm.seed_offset
            untrained = build(arm, task.vocab_size, hseed)
            randomize_values(untrained, 0.5, hseed)
            per_seed["untrained"][name] = harness(untrained, task, args.probes, hseed)
            learning = build(arm, task.vocab_size, hseed)
            learning.load_state_dict(snapshots[name][snap[0]])
            per_seed["learning"][name] = harness(learning, task, args.probes, hseed)
            per_seed["trained"][name] = harness(models[name], task, args.probes, hseed)
            print(f"harness {name} done ({time.time() - t0:.0f}s)", flush=True)
        results["harness_arms"] = harness_arms
        results["harness_raw"] = per_seed
        results["harness"] = harness_summary(per_seed)
    results["seconds"] = time.time() - t0
    raw_free = {k: v for k, v in results.items() if k != "harness_raw"}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(tables(raw_free))
    if not args.no_plot:
        plot(results, out / "curves.png")
    print(tables(raw_free))
    return results


if __name__ == "__main__":
    main()
