"""Tokenisation and packing, written as ``datasets.map(batched=True)`` functions.

Packing concatenates the documents of one map batch, each followed by the EOS id, and cuts the
stream into rows of exactly ``seq_len`` tokens; the tail shorter than a row is dropped. Documents
that span two rows are split; nothing is padded (the published recipe trains on full rows).
"""
from __future__ import annotations

from typing import Any, Optional

from rosa_lightning.data.validation import DataError


class BadRecord(DataError):
    """A document whose text field is missing or not a string (``row``: its index in the dataset)."""

    def __init__(self, row: int, field: str, value: Any) -> None:
        self.row, self.field = row, field
        got = "missing (null)" if value is None else f"{type(value).__name__} {value!r:.40}"
        super().__init__(f"row {row}: field {field!r} is {got}, expected a string")


def tokenize_batch(batch: dict[str, list], indices: Optional[list[int]] = None, *, tokenizer: Any,
                   text_field: str) -> dict[str, list]:
    """{text_field: list[str]} -> {"input_ids": list[list[int]]}, no special tokens added.

    Raises ``BadRecord`` for a value that is not a string (``indices``: the rows' dataset indices).
    """
    for j, text in enumerate(batch[text_field]):
        if not isinstance(text, str):
            raise BadRecord(indices[j] if indices is not None else j, text_field, text)
    enc = tokenizer(batch[text_field], add_special_tokens=False)
    return {"input_ids": enc["input_ids"]}


def pack_ids(docs: list[list[int]], seq_len: int, eos_id: Optional[int]) -> list[list[int]]:
    """Concatenate ``docs`` (EOS after each when ``eos_id`` is not None) into rows of ``seq_len``."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    stream: list[int] = []
    for doc in docs:
        stream.extend(doc)
        if eos_id is not None:
            stream.append(int(eos_id))
    n_rows = len(stream) // seq_len
    return [stream[i * seq_len:(i + 1) * seq_len] for i in range(n_rows)]


def pack_batch(batch: dict[str, list], seq_len: int, eos_id: Optional[int]) -> dict[str, list]:
    """{"input_ids": docs} -> {"input_ids": rows of seq_len} (a batched map may change the row count)."""
    return {"input_ids": pack_ids(batch["input_ids"], seq_len, eos_id)}
