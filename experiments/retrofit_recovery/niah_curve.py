"""Where in stage B does the needle score peak? NIAH by training step from runs with ``callbacks=keep_best_niah``.

Reads ``<run>/best/curve.jsonl`` (written by ``rosa_lightning.evaluation.during_training.TaskEvaluation``) of each
RUN (a train.py run folder, e.g. a study's ``<logs>/stage_b``), prints the score at every evaluated step and the
best step of each run, and plots the curves::

    python -m experiments.retrofit_recovery.niah_curve seed1=logs/rr11_b4800_curve_seed1/stage_b \\
        seed2=logs/rr11_b4800_curve_seed2/stage_b --out experiments/retrofit_recovery/niah_curve.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.harness.report import line_panels


def read_curve(run: Path) -> list[dict]:
    """The evaluations of ``run`` in step order (a resumed run appends; a repeated step keeps its last score)."""
    path = run / "best" / "curve.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run}: no best/curve.jsonl (train it with callbacks=keep_best_niah)")
    by_step: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[int(row["step"])] = row
    if not by_step:
        raise SystemExit(f"{path}: holds no evaluation yet")
    return [by_step[s] for s in sorted(by_step)]


def task_keys(rows: list[dict]) -> list[str]:
    return sorted({k for r in rows for k in r if k.startswith("niah_single_1_")}, key=lambda k: int(k.rsplit("_", 1)[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="[LABEL=]RUN", help="train.py run folders trained with keep_best_niah")
    p.add_argument("--out", type=Path, default=None, help="PNG of the curves (one panel per NIAH length)")
    args = p.parse_args(argv)
    curves = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        label, path = (label, path) if sep and "/" not in label else (spec, spec)
        curves[label] = read_curve(Path(path))
    keys = sorted({k for rows in curves.values() for k in task_keys(rows)}, key=lambda k: int(k.rsplit("_", 1)[1]))
    for label, rows in curves.items():
        for key in task_keys(rows):
            points = [(r["step"], r[key]) for r in rows if key in r]
            step, best = max(points, key=lambda sv: (sv[1], -sv[0]))  # the first step at the maximum
            print(f"{label} {key}: " + " ".join(f"{s}:{v:g}" for s, v in points) + f"  best {best:g} at step {step}")
    if args.out is not None:
        panels = [{"title": key.replace("niah_single_1_", "niah_single_1 at "), "xlabel": "training step",
                   "ylabel": "score (%)",
                   "series": {label: ([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r])
                              for label, rows in curves.items() if any(key in r for r in rows)}}
                  for key in keys]
        line_panels(args.out, panels, ncols=min(3, len(panels)))
        print(f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
