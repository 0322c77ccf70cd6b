"""How well does the counterfactual gradient of a ROSA layer predict the exact effect of single bits?

Runs the finite-difference probes (``rosa_lightning.modeling.finite_diff``) on a tiny Qwen3 (2 layers, hidden 64,
every layer windowed, window 32, ROSA on both layers, M = 4, token channel off) over MQAR batches, in two states:

- ``untrained``: random init with e0, e1 ~ N(0, e_scale^2) (at e0 = e1 = 0 every estimate and difference is 0);
- ``trained``: the same init trained from scratch on MQAR answers for ``--train-steps`` AdamW steps (published
  gradient), which moves e0/e1, the readout and the backbone.

The same probes (single bits at Q-run starts, K-run starts and destination times) and the same exact loss
differences are scored against the estimate of every gradient option, so the options differ only in the estimate.
Writes ``results.json``, ``results.md`` (the table) and ``scatter.png`` under ``--out``.

    python -m experiments.gradient_quality.run
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import Qwen3Config

from experiments.harness.statistics import StreamAgreement
from rosa_lightning.data.synthetic import MQAR, SyntheticDataset
from rosa_lightning.modeling import GradOptions, RosaConfig, build_rosa_model, rosa_layers
from rosa_lightning.modeling.finite_diff import (STREAMS, estimates, finite_differences, logit_grads, randomize_values,
                                                 sample_probes)

OPTIONS = {
    "reference": GradOptions(),
    "k_credit=matched": GradOptions(k_credit="matched"),
    "cf_field=hard": GradOptions(field="hard"),
    "matched+hard": GradOptions(field="hard", k_credit="matched"),
}


def build(task: MQAR, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    backbone = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, intermediate_size=128, vocab_size=task.vocab_size,
                           max_position_embeddings=1024)
    rosa = RosaConfig(bits=4, window=32, global_layers=0, token_channel="off", runtime={"num_threads": 1})
    return build_rosa_model(backbone, rosa)


def train(model, task: MQAR, steps: int, seed: int, batch_size: int = 16, lr: float = 3e-3) -> float:
    """AdamW on every parameter, loss on the MQAR answers; returns the answer accuracy of the last 20 steps."""
    data = SyntheticDataset(task, steps * batch_size, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    hits = []
    model.train()
    for step in range(steps):
        batch = torch.utils.data.default_collate([data[step * batch_size + i] for i in range(batch_size)])
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step >= steps - 20:
            pred = out.logits[:, :-1].argmax(-1)
            mask = batch["answer_mask"][:, 1:]
            hits.append(((pred == batch["input_ids"][:, 1:]) & mask).sum().item() / mask.sum().item())
    model.eval()
    return float(np.mean(hits))


def loss_fn_for(batch, scored: str):
    ids = batch["input_ids"]
    target = (ids if scored == "all" else batch["labels"])[:, 1:]

    def loss_fn(model):
        logits = model(input_ids=ids).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    return loss_fn


def probe(model, state: str, batch, scored: str, num_probes: int, seed: int, raw: dict, groups: list) -> None:
    """Probe every ROSA layer; append (fd, est) per option and stream to raw[f"{state}/layer{i}"]."""
    loss_fn = loss_fn_for(batch, scored)
    for li, layer in enumerate(rosa_layers(model)):
        lg = logit_grads(model, layer, loss_fn)
        probes = sample_probes(lg, num_probes, seed=seed)
        fds = {x: finite_differences(model, layer, loss_fn, lg, x, probes[x]) for x in STREAMS}
        pooled = raw.setdefault(f"{state}/layer{li}", {n: {x: [] for x in STREAMS} for n in OPTIONS})
        for name, options in OPTIONS.items():
            grads = lg.grads(options)
            for x in STREAMS:
                est = estimates(lg, grads, x, probes[x])
                pooled[name][x].append((fds[x], est))
                s = StreamAgreement(x, fds[x], est, probes[x])
                groups.append({"state": state, "seed": seed, "layer": li, "option": name, "stream": x,
                               **s.summary()})


def summarize(pooled: dict) -> dict:
    out = {}
    for name, per_stream in pooled.items():
        out[name] = {}
        for x, parts in per_stream.items():
            fd = np.concatenate([p[0] for p in parts])
            est = np.concatenate([p[1] for p in parts])
            out[name][x] = StreamAgreement(x, fd, est, np.zeros((len(fd), 3), dtype=np.int64)).summary()
    return out


def table(results: dict) -> str:
    lines = ["| state | layer | option | Q Pearson | K Pearson | V Pearson | Q sign | K sign | V sign | "
             "Q cov | K cov | V cov |", "|" + "---|" * 12]
    fmt = lambda v: "n/a" if v != v else f"{v:.2f}"  # noqa: E731 (NaN check)
    for key, summary in results["summary"].items():
        state, layer = key.split("/")
        for name, s in summary.items():
            cells = [fmt(s[x][m]) for m in ("pearson", "sign_agreement", "coverage") for x in STREAMS]
            lines.append(f"| {state} | {layer[5:]} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scatter(results_raw: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["untrained/layer1", "trained/layer1"]
    panels = [(k, n, x) for k in keys for n, x in (("reference", "q"), ("reference", "k"),
                                                   ("k_credit=matched", "k"), ("reference", "v"))]
    fig, axes = plt.subplots(2, 4, figsize=(16, 8))
    for ax, (key, name, x) in zip(axes.ravel(), panels):
        fd = np.concatenate([p[0] for p in results_raw[key][name][x]])
        est = np.concatenate([p[1] for p in results_raw[key][name][x]])
        ax.scatter(fd, est, s=6, alpha=0.5)
        ax.axhline(0, lw=0.5, c="k")
        ax.axvline(0, lw=0.5, c="k")
        ax.set_title(f"{key}: {x.upper()} ({name})", fontsize=9)
        ax.set_xlabel("exact L(bit=1) - L(bit=0)")
        ax.set_ylabel("estimate dL/dz / sigma'(z)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--probes", type=int, default=128, help="bits per stream, layer and seed")
    ap.add_argument("--loss", choices=("all", "answers"), default="all",
                    help="tokens the probed loss scores: every next token, or the MQAR answers only")
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--e-scale", type=float, default=0.5)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = MQAR(seq_len=args.seq_len, num_pairs=8, num_keys=32, num_values=32, num_filler=32)
    probe_batch = torch.utils.data.default_collate([SyntheticDataset(task, 4, seed=10_000)[i] for i in range(4)])
    t0 = time.time()
    raw, groups, accuracy = {}, [], {}
    for seed in range(args.seeds):
        for state in ("untrained", "trained"):
            model = build(task, seed)
            if state == "untrained":
                randomize_values(model, args.e_scale, seed)
            else:
                accuracy[seed] = train(model, task, args.train_steps, seed)
            probe(model, state, probe_batch, args.loss, args.probes, seed, raw, groups)
            print(f"seed {seed} {state} done at {time.time() - t0:.0f}s", flush=True)
    results = {"args": vars(args), "train_answer_accuracy": accuracy, "seconds": time.time() - t0,
               "summary": {k: summarize(v) for k, v in raw.items()}, "groups": groups}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results) + "\n")
    scatter(raw, out / "scatter.png")
    print(table(results))
    print(f"train answer accuracy (last 20 steps): {accuracy}; {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
