"""Loading datasets and tokenizers from local files or hub ids, failing fast when offline."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from rosa_lightning.data.hub import ResourceUnavailableError, resolve_reference
from rosa_lightning.data.validation import DataError, check_not_empty, find_bad_json_record

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow",
             ".csv": "csv", ".txt": "text"}


def backbone_reference(spec: Any) -> Optional[str]:
    """The path or hub id inside a backbone spec, or None for a spec that is a model config.

    A spec is a string (path or hub id), a mapping with ``name_or_path``, or a mapping of Qwen3Config
    fields / a config object (a model built from scratch, which has no tokenizer).
    """
    if isinstance(spec, (str, os.PathLike)):
        return str(spec)
    if isinstance(spec, Mapping) and spec.get("name_or_path") is not None:
        return str(spec["name_or_path"])
    return None


def load_tokenizer(spec: Any, config_key: str = "model.backbone"):
    """``AutoTokenizer`` for a backbone spec (see ``backbone_reference``)."""
    from transformers import AutoTokenizer

    ref = backbone_reference(spec)
    if ref is None:
        raise ValueError(f"{config_key} is a model config without a tokenizer; raw-text data needs a backbone "
                         "given as a local directory or hub id (or a dataset with an 'input_ids' column)")
    ref = resolve_reference(ref, what="tokenizer", config_key=config_key)
    return AutoTokenizer.from_pretrained(ref)


def load_hf_split(path: str, split: str, name: Optional[str] = None,
                  config_key: str = "data.source.path", text_field: Optional[str] = None):
    """One split of a dataset as a ``datasets.Dataset``.

    ``path``: a local data file (by extension: jsonl/json/parquet/arrow/csv/txt), a local directory
    (saved with ``save_to_disk``, or holding data files), or a hub dataset name. Local data files are
    checked to be non-empty first; when loading them fails, the error names the file and line of the
    first broken JSON record (``text_field``: also a record without a string there).
    """
    import datasets

    ref = resolve_reference(path, what="dataset", config_key=config_key, repo_type="dataset")
    local = Path(ref)
    if local.is_file():
        builder = _BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(f"{config_key}={path!r}: unknown data file type {local.suffix!r}; "
                             f"use one of {sorted(_BUILDERS)}")
        return _load_local(local, config_key, text_field,
                           lambda: datasets.load_dataset(builder, data_files={split: str(local)}, split=split))
    if local.is_dir() and any((local / f).exists() for f in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"{config_key}={path!r} has splits {list(ds)}, not {split!r}")
            ds = ds[split]
        return ds
    if local.is_dir():
        return _load_local(local, config_key, text_field, lambda: datasets.load_dataset(ref, name, split=split))
    try:
        return datasets.load_dataset(ref, name, split=split)
    except ConnectionError as exc:  # datasets raises this offline for names missing from its cache
        raise ResourceUnavailableError(f"dataset {path!r} cannot be loaded offline: {exc}. "
                                       f"Set `{config_key}=DIR` to a local copy.") from exc


def _load_local(local: Path, config_key: str, text_field: Optional[str], load):
    """``load()`` a local file or directory of data files, turning datasets' errors into named ones."""
    check_not_empty(local, tuple(_BUILDERS), config_key)
    try:
        return load()
    except (DataError, KeyError):
        raise
    except Exception as exc:  # datasets wraps parse errors in its own types (DatasetGenerationError, ArrowInvalid)
        problem = find_bad_json_record(local, text_field)
        if problem:
            raise DataError(f"{config_key}: {problem}") from exc
        raise DataError(f"{config_key}={str(local)!r} could not be loaded: {type(exc).__name__}: {exc}") from exc
