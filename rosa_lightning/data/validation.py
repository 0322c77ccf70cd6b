"""Naming what is wrong with local data files: which file, which line or row, which field, what was expected.

``datasets`` reports an empty JSON-lines file as a bare ``StopIteration``, a broken line as a generic
``DatasetGenerationError`` and a record without text only later, as a ``TypeError`` in the tokenizer.
The checks here run before loading (empty files and directories, cheap) or after a failure (a scan of
the JSON files that finds the first bad record), so a correct corpus is never read twice.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

JSON_SUFFIXES = (".jsonl", ".json")


class DataError(ValueError):
    """A data file or record that cannot be used, named with its location."""


def data_files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """``path`` itself (a file) or the files with one of ``suffixes`` below the directory ``path``, sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def check_not_empty(path: Path, suffixes: tuple[str, ...], config_key: str) -> None:
    """Raise ``DataError`` for an empty data file, or a directory without data files or with an empty one."""
    files = data_files(path, suffixes)
    if not files:
        raise DataError(f"{config_key}={str(path)!r}: the directory holds no data files (expected files ending in "
                        f"{', '.join(suffixes)}, or a dataset saved with save_to_disk)")
    for file in files:
        if file.stat().st_size == 0 or not _has_content(file):
            raise DataError(f"{config_key}: data file {str(file)!r} is empty (expected one JSON object per line "
                            f"with a text field, or rows of its format)")


def _has_content(file: Path) -> bool:
    with open(file, "rb") as f:
        return any(chunk.strip() for chunk in iter(lambda: f.read(1 << 16), b""))


def _records(file: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed record) for every record of a JSON-lines file or a JSON array file."""
    with open(file, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if file.suffix.lower() == ".json" and head.startswith("["):
        try:
            records = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"data file {str(file)!r} is not valid JSON: {exc}") from exc
        for i, record in enumerate(records):
            yield f"record {i}", record
        return
    with open(file, encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"data file {str(file)!r}, line {n}: not valid JSON ({exc.msg} at column "
                                f"{exc.colno}); expected one JSON object per line") from exc


def record_problem(record: Any, text_field: str) -> Optional[str]:
    """What is wrong with one parsed record, or None."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, expected an object with a {text_field!r} field"
    if text_field not in record:
        return f"has no field {text_field!r} (fields: {sorted(record)[:8]}); expected a string there"
    if not isinstance(record[text_field], str):
        return f"field {text_field!r} is {type(record[text_field]).__name__} {record[text_field]!r:.40}, expected a string"
    return None


def find_bad_json_record(path: Path, text_field: Optional[str]) -> Optional[str]:
    """The first problem in the JSON files at ``path`` (file or directory) as "file, line N: ...", or None.

    Without ``text_field`` only the JSON syntax is checked. Raises ``DataError`` itself for a broken line.
    """
    for file in data_files(path, JSON_SUFFIXES):
        try:
            for where, record in _records(file):
                problem = record_problem(record, text_field) if text_field else None
                if problem:
                    return f"data file {str(file)!r}, {where}: {problem}"
        except UnicodeDecodeError as exc:
            raise DataError(f"data file {str(file)!r} is not UTF-8 text: {exc}") from exc
    return None
