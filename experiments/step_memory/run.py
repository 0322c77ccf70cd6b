"""How much memory does one training step take per rank at Qwen3-0.6B shape and T = 16,384: window + ROSA against
the window alone, with the full-logits loss (before) and the chunked loss (after), with and without activation
checkpointing?

Each configuration runs ``measure.py`` in a fresh process on a shallow, full-width model (layer 0 global, two
windowed layers), which counts the bytes autograd saves by component and the step's peak RSS growth. The whole
28-layer model is then composed from the measured parts: every windowed layer saves the same bytes (checked: layers
1 and 2 agree within 2 %; the larger is used), so

    activations(L)  = embedding + layer 0 + (L - 1) x layer 1 + shared (mask) + final norm + loss
    step peak(L)    = weights(L) + measured peak growth(3 layers) + (L - 3) x (layer 1's saved bytes, or under
                      checkpointing its input and kept retrieval results, + its gradients) + AdamW states(L)

AdamW's two states are counted in the parameters' dtype (bf16-true, as ``experiment=longbench``). The full-logits
loss does not fit this machine at T = 16k (about 26 GB on its own), so its extra over the chunked loss is measured
at two shorter lengths and scaled by T (every tensor it adds is [T, V]; the two lengths check the linearity).

    python -m experiments.step_memory.run            # the study (about 25 minutes on 2 CPU cores)
    python -m experiments.step_memory.run --smoke    # seconds: tiny shape, the same code paths (tests)
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from experiments.harness.report import RESULTS_BEGIN, RESULTS_END, markdown_table, write_json, write_results_block

HERE = Path(__file__).resolve().parent
MODULE = "experiments.step_memory.measure"
ARMS = ["window", "window+rosa", "window+rosa-8"]
ARM_NAMES = {"window": "window", "window+rosa": "window + ROSA (bits 4, published)",
             "window+rosa-8": "window + ROSA (bits 8, recommended)"}
PLANS = {
    "full": dict(shape="0.6b", tokens=16384, window=2048, layers=3, model_layers=28, chunk=1024,
                 loss_lengths=[2048, 4096]),
    "smoke": dict(shape="tiny", tokens=512, window=64, layers=3, model_layers=8, chunk=128, loss_lengths=[128, 256]),
}
GIB = 2 ** 30


def child(plan: dict, arm: str, tokens: int, loss_chunk: int, checkpointing: bool, threads: int) -> dict:
    cmd = [sys.executable, "-m", MODULE, "--shape", plan["shape"], "--arm", arm, "--tokens", str(tokens),
           "--window", str(plan["window"]), "--layers", str(plan["layers"]), "--loss-chunk", str(loss_chunk),
           "--threads", str(threads)] + (["--checkpointing"] if checkpointing else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def layer_bytes(r: dict) -> int:
    """The saved bytes of one windowed layer: the larger of layers 1 and 2. With ROSA they differ a little, since
    the counterfactual table has a row per Q-run of the layer's codes (at most T); more than 2 % apart means the
    per-layer extrapolation does not hold, and raises."""
    a, b = r["saved_bytes"].get("layer 1", 0), r["saved_bytes"].get("layer 2", 0)
    if abs(a - b) > 0.02 * max(a, b):
        raise RuntimeError(f"windowed layers save different bytes ({a} vs {b}): the per-layer extrapolation "
                           "does not hold")
    return max(a, b)


def compose(r: dict, model_layers: int, loss_extra: float = 0.0) -> dict:
    """The whole model's activations and step peak from one shallow measurement (see the module docstring)."""
    s = r["saved_bytes"]
    per_layer = layer_bytes(r)
    n_rosa = len(r["rosa_layers"])
    kept_per_layer = r["kept_retrieval_bytes"] / n_rosa if n_rosa else 0.0
    layer_param = r["layer_param_bytes"][1]
    extra_layers = model_layers - r["layers"]
    weights = r["param_bytes"] + extra_layers * layer_param
    activations = (sum(v for k, v in s.items() if not k.startswith("layer ")) + s.get("layer 0", 0)
                   + (model_layers - 1) * (per_layer + kept_per_layer) + loss_extra)
    peak = (weights + r["peak_growth_bytes"] + loss_extra
            + extra_layers * (per_layer + kept_per_layer + layer_param) + 2 * weights)
    return {"weights": weights, "gradients": weights, "adamw": 2 * weights, "activations": activations,
            "per_layer": per_layer, "kept_per_layer": kept_per_layer, "peak": peak}


def loss_extra_at(rows: list[dict], tokens: int) -> tuple[float, list[float]]:
    """The full-logits loss's extra peak over the chunked loss, per token at each measured length, scaled to
    ``tokens``; (estimate, per-token figures)."""
    per_token = []
    for full, chunked in rows:
        per_token.append((full["peak_growth_bytes"] - chunked["peak_growth_bytes"]) / full["tokens"])
    return per_token[-1] * tokens, per_token


def tables(results: dict) -> str:
    plan, m = results["plan"], results["measured"]
    L, T = plan["model_layers"], plan["tokens"]
    out = [f"Qwen3-0.6B shape ({L} layers, C = 1024, V = 151,936)" if plan["shape"] == "0.6b" else
           f"{plan['shape']} shape ({L} layers)", f", T = {T:,}, window {plan['window']:,}, batch 1, bf16, one rank; "
           f"GiB = 2^30 bytes.\n\n"]
    out.append(f"Measured on the {plan['layers']}-layer model (layer 0 global, layers 1-2 windowed), one fresh "
               "process each:\n\n")
    rows = []
    for arm in ARMS:
        for ckpt in (False, True):
            r = m[f"{arm}|ckpt={ckpt}"]
            s = r["saved_bytes"]
            rows.append([ARM_NAMES[arm], "on" if ckpt else "off", f"{s.get('layer 0', 0) / 2**20:,.0f}",
                         f"{layer_bytes(r) / 2**20:,.1f}", f"{s.get('shared', 0) / 2**20:,.0f}",
                         f"{r['kept_retrieval_bytes'] / 2**20:,.1f}", f"{r['peak_growth_bytes'] / GIB:.2f}",
                         f"{r['forward_s'] + r['backward_s']:.0f}"])
    out.append(markdown_table(["arm", "checkpointing", "layer 0 saved (MiB)", "windowed layer saved (MiB)",
                               "shared mask (MiB)", "kept retrieval results (MiB)", "step peak RSS growth (GiB)",
                               "step s"], rows))
    est, per_token = results["loss_extra"]["estimate"], results["loss_extra"]["per_token"]
    out.append(f"\nFull-logits loss over the chunked loss (chunks of {plan['chunk']}), extra step peak per token: "
               + ", ".join(f"{b / 2**10:,.1f} KiB at T = {t:,}" for b, t in zip(per_token, plan["loss_lengths"]))
               + f"; scaled to T = {T:,}: {est / GIB:.2f} GiB.\n\n")
    out.append(f"The whole {L}-layer model, composed from the rows above (GiB):\n\n")
    rows = []
    window = {ckpt: results["composed"][f"window|ckpt={ckpt}|chunked"]["peak"] for ckpt in (False, True)}
    for arm in ARMS:
        for ckpt in (False, True):
            for loss in ("full", "chunked"):
                c = results["composed"][f"{arm}|ckpt={ckpt}|{loss}"]
                rows.append([ARM_NAMES[arm], "on" if ckpt else "off",
                             "all logits (before)" if loss == "full" else f"chunks of {plan['chunk']} (after)",
                             f"{c['weights'] / GIB:.2f}", f"{c['adamw'] / GIB:.2f}", f"{c['activations'] / GIB:.2f}",
                             f"{c['peak'] / GIB:.2f}", f"{c['peak'] / window[ckpt]:.3f}"])
    out.append(markdown_table(["arm", "checkpointing", "loss", "weights", "AdamW states", "saved activations",
                               "step peak", "peak / window's (chunked, same checkpointing)"], rows))
    return "".join(out)


def plot(results: dict, path: Path) -> None:
    from experiments.harness.report import _pyplot

    plt = _pyplot()
    plan = results["plan"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    parts = [("weights", "weights"), ("gradients", "gradients"), ("adamw", "AdamW states"),
             ("activations", "saved activations"), ("rest", "transient (rest of the peak)")]
    for ax, ckpt in zip(axes, (False, True)):
        labels = []
        keys = [(arm, loss) for arm in ARMS for loss in ("full", "chunked")]
        stacks = {name: [] for name, _ in parts}
        for arm, loss in keys:
            c = results["composed"][f"{arm}|ckpt={ckpt}|{loss}"]
            labels.append(f"{arm}\n{'all logits' if loss == 'full' else 'chunked'}")
            known = c["weights"] + c["gradients"] + c["adamw"] + c["activations"]
            for name in ("weights", "gradients", "adamw", "activations"):
                stacks[name].append(c[name] / GIB)
            stacks["rest"].append(max(0.0, c["peak"] - known) / GIB)
        bottoms = [0.0] * len(keys)
        for name, label in parts:
            ax.bar(range(len(keys)), stacks[name], bottom=bottoms, label=label)
            bottoms = [b + v for b, v in zip(bottoms, stacks[name])]
        ax.set_xticks(range(len(keys)), labels, fontsize=7)
        ax.set_ylabel("GiB")
        ax.set_title(f"checkpointing {'on' if ckpt else 'off'}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"step memory per rank, {plan['model_layers']} layers, T = {plan['tokens']:,} (composed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shape and lengths (seconds)")
    ap.add_argument("--threads", type=int, default=1, help="torch and kernel threads of each measurement")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: beside this script; "
                                                           "--smoke: required)")
    args = ap.parse_args(argv)
    if args.smoke and args.out is None:
        ap.error("--smoke needs --out (the smoke run must not overwrite the study's results)")
    out = args.out or HERE
    out.mkdir(parents=True, exist_ok=True)
    plan = PLANS["smoke" if args.smoke else "full"]
    t0 = time.perf_counter()
    measured, composed = {}, {}
    for arm in ARMS:
        for ckpt in (False, True):
            print(f"[step_memory] {arm}, checkpointing {'on' if ckpt else 'off'}, T = {plan['tokens']}", flush=True)
            measured[f"{arm}|ckpt={ckpt}"] = child(plan, arm, plan["tokens"], plan["chunk"], ckpt, args.threads)
    loss_rows = []
    for T in plan["loss_lengths"]:
        print(f"[step_memory] full-logits vs chunked loss at T = {T}", flush=True)
        loss_rows.append((child(plan, "window", T, 0, False, args.threads),
                          child(plan, "window", T, plan["chunk"], False, args.threads)))
    estimate, per_token = loss_extra_at(loss_rows, plan["tokens"])
    for key, r in measured.items():
        for loss, extra in (("full", estimate), ("chunked", 0.0)):
            composed[f"{key}|{loss}"] = compose(r, plan["model_layers"], extra)
    results = {"plan": plan, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
               "threads": args.threads, "wall_s": time.perf_counter() - t0, "measured": measured,
               "loss_measured": [list(pair) for pair in loss_rows],
               "loss_extra": {"estimate": estimate, "per_token": per_token}, "composed": composed}
    text = tables(results)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(text)
    plot(results, out / "step_memory.png")
    if not args.smoke:
        readme = HERE / "README.md"
        if not write_results_block(readme, text + f"\nWall time of the study: {results['wall_s'] / 60:.1f} min.\n"):
            raise RuntimeError(f"{readme} lacks the results markers {RESULTS_BEGIN!r} ... {RESULTS_END!r}")
    print(text)


if __name__ == "__main__":
    main()
