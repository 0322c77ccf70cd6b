"""Seconds per training step of the study's own loop (``learn.train_arm``) and of the Lightning path
(``train(cfg)`` with ``experiment=learn_mqar``), same model, task and batch, side by side in one process.

Both train the ``best`` arm (tiny Qwen3, 2 layers, hidden 64, W = 32, M = 8, ``kv_shift``, ``qk_tied``) on MQAR,
T = 256, batch 16, one torch thread and one kernel thread. Each path is run for ``--short`` and ``--long`` steps;
the difference of the two wall clocks over the difference of the steps is the cost of one step, start-up and
the final evaluation cancelled out. Lightning runs without validation, checkpoints only at the end, CSV logger.

    python -m experiments.branch_learning.loop_overhead [--short 20] [--long 120] [--repeats 2]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from experiments.branch_learning.learn import make_task, train_arm
from experiments.branch_learning.run import ARMS
from experiments.harness.runs import compose

LIGHTNING = ["logger=csv", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
             "trainer.limit_val_batches=0", "model.rosa.runtime.num_threads=1", "data.num_workers=0",
             "+callbacks.retrieval_runtime.torch_threads=1"]


def own_loop(steps: int) -> float:
    t0 = time.perf_counter()
    train_arm(ARMS["best"], make_task(seq_len=256), steps, log_every=10 ** 9, eval_num=16)
    return time.perf_counter() - t0


def lightning(steps: int, root: Path) -> float:
    from rosa_lightning.cli import train

    out = Path(tempfile.mkdtemp(dir=root))
    cfg = compose("learn_mqar", [*LIGHTNING, f"trainer.max_steps={steps}"], out)
    t0 = time.perf_counter()
    train(cfg)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", type=int, default=20)
    ap.add_argument("--long", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    per_step: dict[str, list[float]] = {"study loop (learn.py)": [], "Lightning (train.py)": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved, so a busy spell of the shared machine hits both
            for name, run in (("study loop (learn.py)", own_loop),
                              ("Lightning (train.py)", lambda n: lightning(n, Path(tmp)))):
                short, long = run(args.short), run(args.long)
                per_step[name].append((long - short) / (args.long - args.short))
    print(f"| path | ms per step ({args.long} - {args.short} steps; each repeat) |\n|---|---|")
    for name, values in per_step.items():
        print(f"| {name} | " + ", ".join(f"{1000 * v:.0f}" for v in values) + " |")
    return per_step


if __name__ == "__main__":
    main()
