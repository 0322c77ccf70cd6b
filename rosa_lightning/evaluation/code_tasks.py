"""LongBench-format code-completion tasks built from held-out source files: ``lcc.jsonl`` and ``repobench-p.jsonl``.

The records have the release's fields (``rosa_lightning.evaluation.records``), so ``eval.py data.dir=<dir>
tasks.longbench=[lcc,repobench-p]`` runs them with the official prompts, truncation, decoding and
``code_sim_score``:

- **lcc** (next-line completion in one file): ``context`` is a file's first lines, ending with a newline;
  ``answers`` is ``[the next non-blank, non-comment line]``; ``input`` is empty, as in the release.
- **repobench-p** (completion with cross-file context): ``context`` holds snippets of other held-out files under
  ``# path:`` headers, taken where they define a name used by the target line (a record is kept only when at
  least one does), ``input`` is the target file's first lines and ``answers`` the next line.

Prompt sizes are set in tokens of the model's tokenizer: each record's prompt (template included) has between
``min_tokens`` and ``max_tokens`` tokens. ``length`` counts whitespace-separated words of the prompt's text, as
the release counts them for English and code. Records depend only on the files, the tokenizer and the seed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Sequence

import numpy as np

from rosa_lightning.data.long_range_mix import CODE_PROMPT, NEXT_LINE, cross_file_context, worth_predicting

PROMPT_OVERHEAD = CODE_PROMPT + NEXT_LINE


def _record(dataset: str, index: int, context: str, input_: str, answer: str) -> dict:
    return {"input": input_, "context": context, "answers": [answer], "length": len((context + input_).split()),
            "dataset": dataset, "language": "python", "all_classes": None, "_id": f"{dataset}-{index}"}


def _cut_points(lines: List[str], count, lo_tokens: int, hi_tokens: int) -> List[int]:
    """Line indices j (the line to predict) whose prefix ``lines[:j]`` has ``lo_tokens``..``hi_tokens`` tokens."""
    total, out = 0, []
    for j, line in enumerate(lines):
        if lo_tokens <= total <= hi_tokens and worth_predicting(line):
            out.append(j)
        total += count(line)
        if total > hi_tokens:
            break
    return out


def lcc_records(texts: Sequence[str], tokenizer: Any, num: int, min_tokens: int, max_tokens: int,
                seed: int = 0) -> List[dict]:
    """Up to ``num`` lcc records, at most one per text, from ``texts`` in a seeded order."""
    count = _counter(tokenizer)
    room = count(PROMPT_OVERHEAD)
    rng = np.random.default_rng(seed)
    out: List[dict] = []
    for i in rng.permutation(len(texts)):
        lines = texts[int(i)].splitlines(keepends=True)
        cuts = _cut_points(lines, count, min_tokens - room, max_tokens - room)
        if not cuts:
            continue
        j = cuts[int(rng.integers(len(cuts)))]
        out.append(_record("lcc", len(out), "".join(lines[:j]), "", lines[j].rstrip("\n")))
        if len(out) >= num:
            break
    return out


def repobench_records(texts: Sequence[str], tokenizer: Any, num: int, min_tokens: int, max_tokens: int,
                      seed: int = 0, require_definition: bool = True) -> List[dict]:
    """Up to ``num`` repobench-p records: in-file prefix of half the budget, cross-file context of the rest.
    ``require_definition=False`` also keeps targets whose names no other text defines (tiny file sets)."""
    count = _counter(tokenizer)
    room = count(PROMPT_OVERHEAD)
    rng = np.random.default_rng(seed + 1)
    out: List[dict] = []
    for i in rng.permutation(len(texts)):
        target = texts[int(i)]
        lines = target.splitlines(keepends=True)
        half = (max_tokens - room) // 2
        chars_per_token = len(target) / max(1, count(target))
        for j in _cut_points(lines, count, (min_tokens - room) // 2, half)[::-1][:8]:
            context, found = cross_file_context(lines[j], texts, target, int(half * chars_per_token), rng)
            prompt_tokens = room + count(context) + count("".join(lines[:j]))
            if (found or not require_definition) and min_tokens <= prompt_tokens <= max_tokens:
                out.append(_record("repobench-p", len(out), context, "".join(lines[:j]), lines[j].rstrip("\n")))
                break
        if len(out) >= num:
            break
    return out


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    """The records as one JSON object per line (the release's layout), written atomically."""
    from rosa_lightning.fileio import atomic_write

    if not records:
        raise ValueError(f"no records to write to {path}: the held-out files are too short for the chosen lengths")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_code_tasks(out_dir: Path, texts: Sequence[str], tokenizer: Any, num: int, min_tokens: int,
                     max_tokens: int, seed: int = 0, require_definition: bool = True) -> dict[str, int]:
    """Write ``lcc.jsonl`` and ``repobench-p.jsonl`` into ``out_dir``; returns the record count of each."""
    lcc = lcc_records(texts, tokenizer, num, min_tokens, max_tokens, seed)
    repo = repobench_records(texts, tokenizer, num, min_tokens, max_tokens, seed, require_definition)
    write_jsonl(Path(out_dir) / "lcc.jsonl", lcc)
    write_jsonl(Path(out_dir) / "repobench-p.jsonl", repo)
    return {"lcc": len(lcc), "repobench-p": len(repo)}


def _counter(tokenizer: Any):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda s: len(backend.encode(s, add_special_tokens=False).ids)
    return lambda s: len(tokenizer.encode(s, add_special_tokens=False))
