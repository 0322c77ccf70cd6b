"""LongBench records: local ``<dataset>.jsonl`` / ``<dataset>_e.jsonl`` files, or the hub's ``data.zip``.

A record is one JSON object per line with the fields of the official release: ``input``, ``context``,
``answers`` (list of str), ``length`` (int, words or characters as the release counts them),
``dataset``, ``language``, ``all_classes`` (list of str or null) and ``_id``.

THUDM/LongBench on the hub is a loading-script dataset, which ``datasets`` >= 4 refuses to run. The
same files are published in the dataset repository as ``data.zip`` (the route the official README
gives); ``hub_data_dir`` downloads it once through ``huggingface_hub`` (cached like any hub file) and
extracts it next to the download, so hub and local directory go through one reader.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Optional

from rosa_lightning.data.hub import ResourceUnavailableError, hub_offline, hub_reachable

FIELDS = {"input": str, "context": str, "answers": list, "length": int, "dataset": str, "language": str,
          "all_classes": (list, type(None)), "_id": str}
HUB_ID = "THUDM/LongBench"
HUB_FILE = "data.zip"


class RecordError(ValueError):
    """A LongBench file or record that does not have the expected form (names the file and line)."""


def file_name(dataset: str, longbench_e: bool) -> str:
    """The release's file name: ``qasper.jsonl`` or, for LongBench-E, ``qasper_e.jsonl``."""
    return f"{dataset}_e.jsonl" if longbench_e else f"{dataset}.jsonl"


def read_records(path: Path, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """The records of one jsonl file, validated (each field present with its type); at most ``limit``.

    Raises ``RecordError`` naming the file, the line and the field for a missing or mistyped field, a line
    that is not a JSON object, or a file without records; ``FileNotFoundError`` for a missing file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"LongBench file {str(path)!r} does not exist")
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            records.append(_check(path, lineno, line))
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise RecordError(f"LongBench file {str(path)!r} holds no records (expected one JSON object per line)")
    return records


def _check(path: Path, lineno: int, line: str) -> dict[str, Any]:
    where = f"{path}:{lineno}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name, kind in FIELDS.items():
        if name not in record:
            raise RecordError(f"{where}: record has no field {name!r} (LongBench records have {sorted(FIELDS)})")
        if isinstance(record[name], bool) or not isinstance(record[name], kind):
            expected = kind.__name__ if isinstance(kind, type) else "list or null"
            raise RecordError(f"{where}: field {name!r} must be {expected}, got {type(record[name]).__name__}")
    if not record["answers"] or not all(isinstance(a, str) for a in record["answers"]):
        raise RecordError(f"{where}: field 'answers' must be a non-empty list of strings")
    return record


def hub_data_dir(hub_id: str = HUB_ID, *, config_key: str = "data.dir", timeout_s: float = 3.0) -> Path:
    """The directory of the release's jsonl files, from ``data.zip`` of the hub dataset ``hub_id``.

    Offline, or with the hub unreachable and nothing cached, raises ``ResourceUnavailableError`` within
    ``timeout_s`` naming ``config_key``, the key that points at a local copy instead.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    hint = (f"Download it on a machine with network access (`hf download {hub_id} {HUB_FILE} --repo-type dataset "
            f"--local-dir DIR && unzip DIR/{HUB_FILE} -d DIR`) and set `{config_key}=DIR/data`.")
    offline = hub_offline("dataset") or not hub_reachable(timeout_s)
    try:
        archive = Path(hf_hub_download(hub_id, HUB_FILE, repo_type="dataset", local_files_only=offline))
    except LocalEntryNotFoundError as exc:
        why = "the HF offline mode is on" if hub_offline("dataset") else f"the hub cannot be reached within {timeout_s:.0f}s"
        raise ResourceUnavailableError(f"LongBench {hub_id!r} is not in the HF cache and {why}. {hint}") from exc
    target = archive.parent / "extracted"
    if not (target / ".complete").exists():
        with zipfile.ZipFile(archive) as z:
            z.extractall(target)
        (target / ".complete").touch()
    found = sorted(target.rglob("*.jsonl"))
    if not found:
        raise RecordError(f"{archive} holds no .jsonl files")
    return found[0].parent
