"""Markdown tables, JSON/CSV results and PNG plots of a study (matplotlib with the Agg backend, no display)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, None / NaN as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def perplexity(losses: Sequence[float]) -> float:
    """exp of the mean of the finite losses (NaN when none is finite)."""
    vals = [x for x in losses if math.isfinite(x)]
    return math.exp(sum(vals) / len(vals)) if vals else math.nan


def binned_perplexity(losses: Sequence[float], width: int) -> tuple[list[int], list[float]]:
    """Per-position losses -> (bin centres, perplexity of each bin's mean finite loss), ``width`` positions a bin;
    bins with no finite loss are left out."""
    xs, ys = [], []
    for lo in range(0, len(losses), width):
        value = perplexity(losses[lo:lo + width])
        if math.isfinite(value):
            xs.append(lo + width // 2)
            ys.append(value)
    return xs, ys


RESULTS_BEGIN, RESULTS_END = "<!-- results: written by run.py -->", "<!-- end of results -->"


def write_results_block(readme: Path, text: str) -> bool:
    """Replace the text between the README's results markers with ``text``; False (nothing written) without them."""
    doc = Path(readme).read_text()
    if RESULTS_BEGIN not in doc or RESULTS_END not in doc:
        return False
    head, rest = doc.split(RESULTS_BEGIN, 1)
    tail = rest.split(RESULTS_END, 1)[1]
    Path(readme).write_text(f"{head}{RESULTS_BEGIN}\n{text}{RESULTS_END}{tail}")
    return True


def write_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_panels(path: Path, panels: Sequence[dict], ncols: int = 3, logx: bool = False,
                suptitle: Optional[str] = None) -> None:
    """One PNG with a panel per entry: ``{"title", "xlabel", "ylabel", "series": {label: (xs, ys)},
    optional "vline": x, "ylim": (lo, hi), "logy": bool}``."""
    plt = _pyplot()
    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for label, (xs, ys) in panel["series"].items():
            ax.plot(xs, ys, marker="o" if len(xs) <= 8 else None, markersize=3, label=label)
        if panel.get("vline") is not None:
            ax.axvline(panel["vline"], color="grey", linestyle=":", linewidth=1)
        if logx:
            ax.set_xscale("log", base=2)
        if panel.get("logy"):
            ax.set_yscale("log")
        if panel.get("ylim"):
            ax.set_ylim(*panel["ylim"])
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
