"""Where in stage B does the needle score peak? NIAH by training step from runs with ``callbacks=keep_best_niah``.

Reads ``<run>/best/curve.jsonl`` (written by ``rosa_lightning.evaluation.during_training.TaskEvaluation``) of each
RUN (a train.py run folder, e.g. a study's ``<logs>/stage_b``), prints the score at every evaluated step and the
best step of each run, and plots the curves::

    python -m experiments.retrofit_recovery.niah_curve seed1=logs/rr11_b4800_curve_seed1/stage_b \\
        seed2=logs/rr11_b4800_curve_seed2/stage_b --test-samples 100 --out experiments/retrofit_recovery/niah_curve.png

With ``--test-samples N`` the run's periodic checkpoint at every evaluated step (``checkpoints/step<step>.ckpt``,
loaded into the run's merged ``model/``) is also scored on N samples of ``--test-seed`` (42: the samples that
``eval.py`` and ``rescore.py`` report), so the curve the callback chose on stands beside the one a final evaluation
would have seen. Those scores are cached in ``<run>/best/test_curve.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.harness.report import _pyplot


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


def test_curve(run: Path, steps: list[int], length: int, samples: int, seed: int) -> dict[int, float]:
    """RULER niah_single_1 at ``length`` on ``samples`` samples of ``seed`` for the checkpoint of every step (greedy,
    8 rows a batch, as ``eval.py``), cached in ``<run>/best/test_curve.json``."""
    from tqdm.auto import tqdm

    from rosa_lightning.evaluation.runner import predict
    from rosa_lightning.evaluation.tasks import niah_task
    from rosa_lightning.generation.loading import load_run
    from rosa_lightning.lit_module import load_initial_weights

    cache = run / "best" / "test_curve.json"
    key = f"niah_single_1_{length} samples={samples} seed={seed}"
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    scores = {int(k): v for k, v in stored.get(key, {}).items()}
    todo = [s for s in steps if s not in scores]
    if not todo:
        return {s: scores[s] for s in steps}
    missing = [s for s in todo if not (run / "checkpoints" / f"step{s:07d}.ckpt").is_file()]
    if missing:
        raise SystemExit(f"{run}: no checkpoints/step<step>.ckpt for steps {missing} (the test curve needs the "
                         f"periodic checkpoint of every evaluated step)")
    model, tok = load_run(str(run / "model"), device="cpu")
    task = niah_task(tok, length, num_samples=samples, seed=seed)
    for step in tqdm(todo, desc=f"{run.name}: checkpoints on the test samples", unit="ckpt"):
        load_initial_weights(model, str(run / "checkpoints" / f"step{step:07d}.ckpt"))
        model.eval()
        preds = predict(model, tok, task.samples, batch_size=8, max_batch_tokens=1 << 30)
        scores[step] = task.score([{"pred": preds[x.key], **x.meta} for x in task.samples])
        stored[key] = {str(k): v for k, v in sorted(scores.items())}
        cache.write_text(json.dumps(stored, indent=1) + "\n")
    return {s: scores[s] for s in steps}


def task_keys(rows: list[dict]) -> list[str]:
    return sorted({k for r in rows for k in r if k.startswith("niah_single_1_")}, key=lambda k: int(k.rsplit("_", 1)[1]))


def first_best(scores: dict[int, float]) -> int:
    """The step the callback keeps: the first at the highest score."""
    return max(scores, key=lambda step: (scores[step], -step))


def plot_curves(path: Path, keys: list[str], curves: dict, tests: dict, samples: int, seed: int) -> None:
    """One panel per NIAH length, one colour per run: the curve the callback kept on (dashed, the kept step
    marked) and, where scored, the checkpoints on the test samples (solid)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for i, (label, rows) in enumerate(curves.items()):
            points = {r["step"]: r[key] for r in rows if key in r}
            if not points:
                continue
            colour = f"C{i % 10}"
            ax.plot(list(points), list(points.values()), linestyle="--", color=colour, alpha=0.7,
                    label=f"{label}: kept on")
            kept = first_best(points)
            if (label, key) in tests:
                test = tests[label, key]
                ax.plot(list(test), list(test.values()), color=colour, marker="o", markersize=3,
                        label=f"{label}: seed {seed}, {samples} samples")
                ax.plot([kept], [test[kept]], marker="*", markersize=11, color=colour, linestyle="none")
            else:
                ax.plot([kept], [points[kept]], marker="*", markersize=11, color=colour, linestyle="none")
        ax.set_title(key.replace("niah_single_1_", "niah_single_1 at ") + " (star: the kept step)", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("score (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="[LABEL=]RUN", help="train.py run folders trained with keep_best_niah")
    p.add_argument("--out", type=Path, default=None, help="PNG of the curves (one panel per NIAH length)")
    p.add_argument("--test-samples", type=int, default=0,
                   help="also score every evaluated step's checkpoint on this many samples of --test-seed")
    p.add_argument("--test-seed", type=int, default=42, help="seed of the test samples (eval.py's: 42)")
    args = p.parse_args(argv)
    if args.test_samples < 0:
        raise SystemExit(f"--test-samples must be at least 0, got {args.test_samples}")
    curves, tests = {}, {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        label, path = (label, path) if sep and "/" not in label else (spec, spec)
        curves[label] = read_curve(Path(path))
        if args.test_samples:
            for key in task_keys(curves[label]):
                steps = [r["step"] for r in curves[label] if key in r]
                length = int(key.rsplit("_", 1)[1])
                tests[label, key] = test_curve(Path(path), steps, length, args.test_samples, args.test_seed)
    keys = task_keys([r for rows in curves.values() for r in rows])
    for label, rows in curves.items():
        for key in task_keys(rows):
            points = {r["step"]: r[key] for r in rows if key in r}
            step = first_best(points)
            print(f"{label} {key}: " + " ".join(f"{s}:{v:g}" for s, v in points.items())
                  + f"  best {points[step]:g} at step {step}")
            if (label, key) in tests:
                test = tests[label, key]
                top = first_best(test)
                print(f"{label} {key}, {args.test_samples} samples of seed {args.test_seed}: "
                      + " ".join(f"{s}:{v:g}" for s, v in test.items())
                      + f"  at the kept step {test[step]:g}, best {test[top]:g} at step {top}, last {test[max(test)]:g}")
    if args.out is not None:
        plot_curves(args.out, keys, curves, tests, args.test_samples, args.test_seed)
        print(f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
