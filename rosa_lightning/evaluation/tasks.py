"""Evaluation tasks as generation samples and scores: LongBench / LongBench-E datasets and RULER NIAH.

Each task has a name (``qasper``, ``qasper_e`` for LongBench-E, ``niah_single_1_32768``), a list of
``Sample``s, the prediction file they are appended to, and a scoring function over that file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rosa_lightning.evaluation import longbench, niah
from rosa_lightning.evaluation.prompts import build_prompt, check_max_length, tokenize
from rosa_lightning.evaluation.records import file_name, read_records
from rosa_lightning.evaluation.runner import Sample


@dataclass
class Task:
    """``kind``: "longbench", "longbench_e" or "niah"; ``key``: where its score goes in ``results[kind]`` (the
    dataset name, or the NIAH length); ``score(rows)``: the task's score(s) from prediction rows."""

    name: str
    kind: str
    key: str | int
    samples: list[Sample]
    score: Callable[[list[dict]], Any]


def longbench_task(tokenizer: Any, data_dir: Path, dataset: str, *, longbench_e: bool, max_length: int,
                   chat_template: bool, limit: int | None = None) -> Task:
    """One LongBench (or LongBench-E) dataset: its records' official prompts and its official scorer."""
    if dataset not in longbench.LONGBENCH_DATASETS:
        raise ValueError(f"unknown LongBench dataset {dataset!r}; known: {list(longbench.LONGBENCH_DATASETS)}")
    if longbench_e and dataset not in longbench.LONGBENCH_E_DATASETS:
        raise ValueError(f"{dataset!r} has no LongBench-E file; LongBench-E datasets: "
                         f"{list(longbench.LONGBENCH_E_DATASETS)}")
    check_max_length(tokenizer, dataset, max_length)
    records = read_records(data_dir / file_name(dataset, longbench_e), limit=limit)
    _check_unique_ids(records, data_dir / file_name(dataset, longbench_e))
    max_new = longbench.max_new_tokens(dataset)
    samsum = dataset == "samsum"
    # the official samsum call stops at "\n" too and forces one new token (min_length = context length + 1);
    # a tokenizer that encodes "\n" to nothing can never emit it, so there is no stop to add
    newline = tuple(tokenizer.encode("\n", add_special_tokens=False)[-1:]) if samsum else ()
    samples = []
    for r in records:
        p = build_prompt(tokenizer, dataset, r, max_length, chat_template)
        meta = {"answers": r["answers"], "all_classes": r["all_classes"], "length": r["length"],
                "prompt_tokens": len(p.input_ids), "truncated": p.truncated}
        samples.append(Sample(r["_id"], p.input_ids, max_new, newline, 1 if samsum else 0, meta))

    def score(rows: list[dict]) -> Any:
        preds, answers = [row["pred"] for row in rows], [row["answers"] for row in rows]
        classes = rows[-1]["all_classes"] if rows else None  # official eval.py keeps the last line's all_classes
        if longbench_e:
            return longbench.scorer_e(dataset, preds, answers, [row["length"] for row in rows], classes)
        return longbench.scorer(dataset, preds, answers, classes)

    name = f"{dataset}_e" if longbench_e else dataset
    return Task(name, "longbench_e" if longbench_e else "longbench", name, samples, score)


def niah_task(tokenizer: Any, max_seq_length: int, *, num_samples: int, seed: int) -> Task:
    """RULER niah_single_1 at ``max_seq_length`` tokens (prompt + 128 generated tokens)."""
    records = niah.generate_niah(tokenizer, max_seq_length, num_samples=num_samples, seed=seed)
    samples = [Sample(r["_id"], tokenize(tokenizer, r["input"]), int(r["max_new_tokens"]),
                      meta={"answers": r["answers"], "length": r["length"], "needle_line": r["needle_line"]})
               for r in records]

    def score(rows: list[dict]) -> float:
        return niah.score_niah([row["pred"] for row in rows], [row["answers"] for row in rows])

    return Task(f"niah_single_1_{max_seq_length}", "niah", max_seq_length, samples, score)


def _check_unique_ids(records: list[dict], path: Path) -> None:
    seen: set[str] = set()
    for r in records:
        if r["_id"] in seen:
            raise ValueError(f"{path}: _id {r['_id']!r} occurs twice; predictions are keyed by _id")
        seen.add(r["_id"])
