"""Evaluation results: ``results.json``, the markdown table, and the columns of the published table.

The summary row holds one column per LongBench dataset and per NIAH length; ``mean`` is their plain
mean (as in the ROSA-Tuning paper's table: five LongBench datasets and NIAH at 32k), and
``category_mean`` the LongBench leaderboard's mean of category means over the LongBench columns.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rosa_lightning.evaluation import longbench
from rosa_lightning.fileio import atomic_write

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"


def columns(results: dict) -> dict[str, float]:
    """The summary columns: every LongBench dataset score and ``niah@<length>``, in run order."""
    cols = dict(results.get("longbench", {}))
    cols.update({f"niah@{n}": v for n, v in results.get("niah", {}).items()})
    return cols


def summarize(results: dict) -> dict:
    """Add ``mean`` (plain mean of the columns, round 2) and ``category_mean`` (LongBench only) in place."""
    results["mean"] = longbench.mean_score(columns(results))
    if results.get("longbench"):
        results["category_mean"] = longbench.category_mean(results["longbench"])
    return results


def markdown_table(results: dict) -> str:
    """One-row table of the summary columns (LongBench-E buckets as a second table when present)."""
    cols = columns(results)
    head = ["arm", *cols, "mean"]
    row = [results.get("arm", "?"), *(format_score(v) for v in cols.values()), format_score(results.get("mean", float("nan")))]
    lines = [table_row(head), table_row(["---"] * len(head)), table_row(row)]
    e = results.get("longbench_e", {})
    if e:
        lines += ["", table_row(["LongBench-E", "0-4k", "4-8k", "8k+"]), table_row(["---"] * 4)]
        lines += [table_row([name, *(format_score(b[k]) for k in ("0-4k", "4-8k", "8k+"))]) for name, b in e.items()]
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, results: dict) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` atomically; returns both paths."""
    return (write_text(out_dir / RESULTS_FILE, json.dumps(results, indent=2, allow_nan=True) + "\n"),
            write_text(out_dir / TABLE_FILE, markdown_table(results)))


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the complete new one)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_results(path: Path) -> dict:
    """``results.json`` of an evaluation directory (or the file itself)."""
    file = path / RESULTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{str(path)!r} holds no {RESULTS_FILE} (an evaluation output directory expected)")
    return json.loads(file.read_text(encoding="utf-8"))


def flat_metrics(results: dict) -> dict[str, float]:
    """The figures as flat logger metrics: ``longbench/<name>``, ``longbench_e/<name>/<bucket>``, ``niah/<n>``."""
    out: dict[str, float] = {f"longbench/{k}": v for k, v in results.get("longbench", {}).items()}
    for name, buckets in results.get("longbench_e", {}).items():
        out.update({f"longbench_e/{name}/{b}": v for b, v in buckets.items()})
    out.update({f"niah/{n}": v for n, v in results.get("niah", {}).items()})
    out["mean"] = results.get("mean", float("nan"))
    for k, v in results.get("throughput", {}).items():
        if isinstance(v, (int, float)) and v is not None:
            out[f"throughput/{k}"] = float(v)
    return out


def format_score(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
