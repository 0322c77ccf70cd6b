"""Data sources: where the rows of a run come from.

A source has one method, ``build(seed) -> (train, val)``, returning two map-style datasets whose items
are dicts of tensors of one fixed length T:

    input_ids    int64 [T]
    labels       int64 [T], optional: the token scored at t, -100 where nothing is scored
    answer_mask  bool  [T], optional: True at answer tokens (accuracy is measured there)

Without ``labels`` every token is scored. Item i depends only on (seed, i), so batches are the same
whatever the number of DataLoader workers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from rosa_lightning.data.loading import load_hf_split, load_tokenizer
from rosa_lightning.data.packing import BadRecord, pack_batch, tokenize_batch
from rosa_lightning.data.synthetic import SyntheticDataset
from rosa_lightning.data.validation import DataError, find_bad_json_record


class SyntheticSource:
    """A synthetic task from ``rosa_lightning.data.synthetic`` (anything with ``sample(rng)``).

    The train and validation sets use different seeds (``seed`` and ``seed + val_seed_offset``), so no
    validation example is a training example.
    """

    def __init__(self, task: Any, num_train: int, num_val: int, val_seed_offset: int = 1_000_003) -> None:
        self.task = task
        self.num_train = int(num_train)
        self.num_val = int(num_val)
        self.val_seed_offset = int(val_seed_offset)

    @property
    def seq_len(self) -> int:
        return int(self.task.seq_len)

    def build(self, seed: int) -> tuple[Dataset, Dataset]:
        train = SyntheticDataset(self.task, self.num_train, seed=seed)
        val = SyntheticDataset(self.task, self.num_val, seed=seed + self.val_seed_offset)
        return train, val


class PackedRows(Dataset):
    """Fixed-length rows of a packed HF dataset (column ``input_ids``), as dicts of int64 tensors."""

    def __init__(self, rows) -> None:
        self.rows = rows.with_format("torch", columns=["input_ids"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[int(index)]["input_ids"].to(torch.int64)}


class HFTextSource:
    """Documents from Hugging Face ``datasets``, tokenised with the backbone's tokenizer and packed.

    ``path`` is a local file (``.jsonl``/``.json``/``.parquet``/``.arrow``), a local directory (files of
    those kinds, or a dataset saved with ``save_to_disk``), or a hub dataset name. Documents are
    tokenised (or taken as they are when the dataset already has an ``input_ids`` column), each is
    followed by the EOS token, and the stream is cut into rows of ``seq_len`` tokens (no padding; each
    map batch drops its last partial row). The last ``val_rows`` rows of a seeded permutation are held
    out for validation unless ``val_split`` names a split of their own.
    """

    def __init__(self, path: str, tokenizer: Any = None, seq_len: int = 2048, split: str = "train",
                 name: Optional[str] = None, text_field: str = "text", val_split: Optional[str] = None,
                 val_rows: int = 8, max_documents: Optional[int] = None, num_proc: Optional[int] = None,
                 map_batch_size: int = 1000) -> None:
        self.path = path
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)
        self.split, self.name, self.text_field = split, name, text_field
        self.val_split, self.val_rows = val_split, int(val_rows)
        self.max_documents = max_documents
        self.num_proc = num_proc
        self.map_batch_size = int(map_batch_size)

    def build(self, seed: int) -> tuple[Dataset, Dataset]:
        train_docs = load_hf_split(self.path, self.split, self.name, text_field=self.text_field)
        if self.max_documents is not None:
            train_docs = train_docs.select(range(min(self.max_documents, len(train_docs))))
        train = self._pack(train_docs)
        if self.val_split is not None:
            val = self._pack(load_hf_split(self.path, self.val_split, self.name, text_field=self.text_field))
        else:
            if len(train) <= self.val_rows:
                raise ValueError(f"data source {self.path!r} gives {len(train)} rows of {self.seq_len} tokens; "
                                 f"at least val_rows + 1 = {self.val_rows + 1} are needed")
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
            cut = len(order) - self.val_rows
            train, val = train.select(sorted(order[:cut])), train.select(sorted(order[cut:]))
        return PackedRows(train), PackedRows(val)

    def _pack(self, docs):
        if len(docs) == 0:
            raise ValueError(f"data source {self.path!r} (split {self.split!r}) has no documents")
        if "input_ids" not in docs.column_names:
            if self.text_field not in docs.column_names:
                raise KeyError(f"data source {self.path!r} has neither 'input_ids' nor the text field "
                               f"{self.text_field!r}; columns: {docs.column_names}")
            docs = self._tokenize(docs)
        eos = self._eos_id()
        rows = docs.map(pack_batch, batched=True, batch_size=self.map_batch_size,
                        fn_kwargs={"seq_len": self.seq_len, "eos_id": eos},
                        remove_columns=docs.column_names, num_proc=self.num_proc, desc="pack")
        if len(rows) == 0:
            raise ValueError(f"data source {self.path!r}: no full row of {self.seq_len} tokens; "
                             "lower data.seq_len or add documents")
        return rows

    def _tokenize(self, docs):
        try:
            return docs.map(tokenize_batch, batched=True, batch_size=self.map_batch_size, with_indices=True,
                            fn_kwargs={"tokenizer": self._tokenizer(), "text_field": self.text_field},
                            remove_columns=docs.column_names, num_proc=self.num_proc, desc="tokenize")
        except BadRecord as exc:
            # the dataset row index is exact but says nothing about files; a local JSON corpus can say more
            local = Path(str(self.path)).expanduser()
            where = find_bad_json_record(local, self.text_field) if local.exists() else None
            raise DataError(f"data source {self.path!r}: {where or exc}") from exc

    def _tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("HFTextSource needs a tokenizer (data.source.tokenizer) for a dataset of raw text")
        if not hasattr(self.tokenizer, "eos_token_id"):  # a reference, not a tokenizer object
            self.tokenizer = load_tokenizer(self.tokenizer)
        return self.tokenizer

    def _eos_id(self) -> Optional[int]:
        if self.tokenizer is None:
            return None
        return self._tokenizer().eos_token_id

