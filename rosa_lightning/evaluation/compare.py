"""Several evaluations side by side: ``python -m rosa_lightning.evaluation.compare DIR [DIR ...] [--out DIR]``.

Prints (and writes to ``<out>/comparison.md``) one row per evaluation directory with every column the
evaluations share, the plain mean over those columns, and for each arm other than the global and
window-only baselines the share of the global-minus-window gap it recovers,
``(arm - window) / (global - window)``, as in "57.1 of 59.2, window 29.4: 93% recovered". With NIAH at
several lengths, ``niah_vs_length.png`` plots score versus context length for every arm.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional

from rosa_lightning.evaluation import longbench
from rosa_lightning.evaluation.results import columns, format_score, read_results, table_row, write_text


def shared_columns(all_results: list[dict]) -> list[str]:
    """Columns present in every evaluation, in the order of the first one."""
    first = list(columns(all_results[0]))
    return [c for c in first if all(c in columns(r) for r in all_results[1:])]


# Scores are on the 0-100 scale: a gap of less than a point between the baselines is within the noise of a few
# hundred samples, and a share of it (a ratio over a near-zero denominator) would mean nothing.
MIN_GAP = 1.0


def gap_recovered(value: float, global_: float, window: float, min_gap: float = MIN_GAP) -> float:
    """Share (0-1, may leave that range) of the global-minus-window gap that ``value`` recovers; NaN
    (no gap to recover) unless global is better than window by at least ``min_gap``."""
    gap = global_ - window
    return (value - window) / gap if gap >= min_gap else float("nan")


def comparison_table(all_results: list[dict], labels: Optional[list[str]] = None) -> str:
    """Markdown table: arms as rows, shared columns, mean over them, and the gap recovered on the mean."""
    labels = labels or [r.get("arm", "?") for r in all_results]
    cols = shared_columns(all_results)
    values = [columns(r) for r in all_results]
    means = [longbench.mean_score({c: v[c] for c in cols}) for v in values]
    base = {lab: m for lab, m in zip(labels, means)}
    has_baselines = "global" in base and "window" in base
    head = ["arm", *cols, "mean"] + (["gap recovered"] if has_baselines else [])
    lines = [table_row(head), table_row(["---"] * len(head))]
    for label, v, m in zip(labels, values, means):
        cells = [label, *(format_score(v[c]) for c in cols), format_score(m)]
        if has_baselines:
            share = gap_recovered(m, base["global"], base["window"])
            cells.append("" if label in ("global", "window") or math.isnan(share) else f"{100 * share:.0f}%")
        lines.append(table_row(cells))
    return "\n".join(lines) + "\n"


def plot_niah(all_results: list[dict], labels: list[str], path: Path) -> Optional[Path]:
    """NIAH score versus context length, one line per arm; None when no arm has two or more lengths."""
    series = [(lab, sorted((int(n), v) for n, v in r.get("niah", {}).items())) for lab, r in zip(labels, all_results)]
    if not any(len(s) >= 2 for _, s in series):
        return None
    try:
        import matplotlib  # optional: the `studies` extra (also part of `test`)
    except ImportError as exc:
        raise ImportError("the NIAH-versus-length plot of a comparison needs matplotlib: pip install -c "
                          "constraints.txt -e \".[studies]\" (or compare without --out)") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series:
        if points:
            ax.plot([n for n, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("niah_single_1 score")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m rosa_lightning.evaluation.compare", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="evaluation output directories (holding results.json)")
    parser.add_argument("--labels", nargs="*", help="row labels (default: each evaluation's arm)")
    parser.add_argument("--out", type=Path, default=None, help="write comparison.md (and the NIAH plot) here")
    args = parser.parse_args(argv)
    all_results = [read_results(d) for d in args.dirs]
    labels = args.labels or [r.get("arm", "?") for r in all_results]
    if len(labels) != len(all_results):
        parser.error(f"--labels has {len(labels)} names for {len(all_results)} directories")
    table = comparison_table(all_results, labels)
    print(table, end="")
    if args.out is not None:
        write_text(args.out / "comparison.md", table)
        plot = plot_niah(all_results, labels, args.out / "niah_vs_length.png")
        print(f"wrote {args.out / 'comparison.md'}" + (f" and {plot}" if plot else ""))
    return table


if __name__ == "__main__":
    main()
