"""Python source code available offline as a corpus: the standard library and the installed packages.

Every ``.py`` file under the chosen roots (default: this interpreter's stdlib without its test directories, and
its ``site-packages``) is one document. Files are deduplicated by the SHA-1 of their bytes (many packages vendor
the same modules), and each distinct file falls into ``train``, ``val`` or ``test`` by that hash, so a file that
is installed twice can never be in two splits. A byte budget per split keeps the corpus to the size a run needs;
the files kept are the first ones in hash order, which does not depend on the order the filesystem lists them.

The file list of a corpus (path, hash, split) is cached as JSON next to the tokenizer, because walking and hashing
every installed file takes seconds. The tokenizer is a byte-level BPE trained with HF ``tokenizers`` on the
training split only and saved as a Hugging Face tokenizer directory (``tokenizer.json`` plus its config), so a
model trained on it is saved with it and loads like any hub checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from rosa_lightning.data.stdlib_corpus import EOT, read_document, stdlib_root, train_tokenizer

SPLITS = ("train", "val", "test")
SKIP_DIRS = {"__pycache__", "test", "tests", "idle_test"}


def default_roots() -> List[str]:
    """The stdlib and this environment's ``site-packages`` (purelib), in that order."""
    roots = [str(stdlib_root()), sysconfig.get_paths()["purelib"]]
    return list(dict.fromkeys(roots))


def split_of_hash(digest: str, val_fraction: float, test_fraction: float) -> str:
    """``test`` for the first ``test_fraction`` of the hash space, ``val`` for the next ``val_fraction``."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction and test_fraction must be >= 0 with a sum below 1, got "
                         f"{val_fraction} and {test_fraction}")
    u = int(digest[:16], 16) / 2.0**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def scan_files(roots: Sequence[str], min_bytes: int, max_bytes: int, files: Optional[Sequence[str]] = None):
    """``[(path, sha1)]`` of the distinct ``.py`` files under ``roots`` with a size in [min_bytes, max_bytes].

    ``files``: explicit paths relative to the first root instead of a walk (tests use a few). Test directories and
    ``site-packages`` inside the stdlib root are skipped (site-packages is its own root); a file whose bytes were
    already seen is dropped, the first path found is kept.
    """
    if files is not None:
        candidates = [Path(roots[0]) / f for f in files]
    else:
        candidates = []
        for root in map(Path, roots):
            if not root.is_dir():
                raise FileNotFoundError(f"CodeCorpus: root {root} is not a directory")
            for path in sorted(root.rglob("*.py")):
                rel = path.relative_to(root).parts[:-1]
                if SKIP_DIRS.isdisjoint(rel) and "site-packages" not in rel:
                    candidates.append(path)
    seen: Dict[str, str] = {}
    for path in candidates:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if not min_bytes <= size <= max_bytes or not path.is_file():
            continue
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        seen.setdefault(digest, str(path))
    return [(p, h) for h, p in seen.items()]


@dataclass
class CodeCorpus:
    """Python files as documents, deduplicated, split by content hash, with a cached local BPE tokenizer.

    ``cache_dir``: where the file list (``files.json``), the tokenizer directory (``tokenizer_<vocab_size>/``) and
    the token ids are kept; ``None`` recomputes them on every use. ``tokenizer_path``: a Hugging Face tokenizer
    (directory or hub id, e.g. the backbone a run tunes) to use instead of training one. ``budget_bytes``: at
    most this many bytes of files per split (files in hash order), ``None`` = all. ``held_out_fraction``: when
    set, the validation and test splits get half of it each (the stdlib corpus's key).
    """

    cache_dir: Optional[str] = None
    vocab_size: int = 8192
    roots: Optional[List[str]] = None
    files: Optional[List[str]] = None
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    min_file_bytes: int = 1000
    max_file_bytes: int = 200_000
    budget_bytes: Dict[str, Optional[int]] = field(default_factory=lambda: {"train": None, "val": None, "test": None})
    tokenizer_path: Optional[str] = None
    held_out_fraction: Optional[float] = None

    def __post_init__(self) -> None:
        if self.held_out_fraction is not None:
            self.val_fraction = self.test_fraction = float(self.held_out_fraction) / 2
        self.roots = [str(r) for r in self.roots] if self.roots else default_roots()
        self.files = [str(f) for f in self.files] if self.files is not None else None
        budget = {str(k): (None if v is None else int(v)) for k, v in dict(self.budget_bytes or {}).items()}
        unknown = set(budget) - set(SPLITS)
        if unknown:
            raise ValueError(f"budget_bytes: unknown splits {sorted(unknown)}; use {SPLITS}")
        self.budget_bytes = {**{s: None for s in SPLITS}, **budget}
        self._index: Optional[Dict[str, List[str]]] = None
        self._tokenizer = None

    def _signature(self) -> dict:
        return {"roots": self.roots, "files": self.files, "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction, "min_file_bytes": self.min_file_bytes,
                "max_file_bytes": self.max_file_bytes, "budget_bytes": self.budget_bytes}

    def split_files(self, split: str) -> List[str]:
        """Absolute paths of the files of ``split``, in hash order."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self._index is None:
            self._index = self._load_index()
        return list(self._index[split])

    def _load_index(self) -> Dict[str, List[str]]:
        cache = Path(self.cache_dir) / "files.json" if self.cache_dir else None
        if cache is not None and cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("signature") == json.loads(json.dumps(self._signature())):
                return saved["splits"]
        found = sorted(scan_files(self.roots, self.min_file_bytes, self.max_file_bytes, self.files),
                       key=lambda ph: ph[1])
        splits: Dict[str, List[str]] = {s: [] for s in SPLITS}
        used = {s: 0 for s in SPLITS}
        for path, digest in found:
            split = split_of_hash(digest, self.val_fraction, self.test_fraction)
            size = Path(path).stat().st_size
            budget = self.budget_bytes[split]
            if budget is not None and used[split] + size > budget:
                continue
            splits[split].append(path)
            used[split] += size
        if cache is not None:
            from rosa_lightning.fileio import atomic_write

            payload = json.dumps({"signature": self._signature(), "splits": splits})
            atomic_write(cache, lambda tmp: Path(tmp).write_text(payload))
        return splits

    def texts(self, split: str) -> List[str]:
        return [read_document(Path(p)) for p in self.split_files(split)]

    @property
    def tokenizer(self):
        """The ``tokenizer_path`` tokenizer, or the corpus's own ``PreTrainedTokenizerFast`` (EOS = pad = ``EOT``,
        id 0; no BOS is added to encodings)."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self):
        from transformers import PreTrainedTokenizerFast

        if self.tokenizer_path is not None:
            from rosa_lightning.data.loading import load_tokenizer

            return load_tokenizer(str(self.tokenizer_path), config_key="data.source.corpus.tokenizer_path")

        target = Path(self.cache_dir) / f"tokenizer_{self.vocab_size}" if self.cache_dir else None
        if target is not None and (target / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(target))
        texts = self.texts("train")
        if not texts:
            raise ValueError("CodeCorpus: the training split is empty; add files or lower the held-out fractions")
        raw = train_tokenizer(texts, self.vocab_size)
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOT, pad_token=EOT,
                                      model_max_length=1 << 20)
        if target is not None:
            from rosa_lightning.fileio import atomic_write_dir

            atomic_write_dir(target, lambda tmp: tok.save_pretrained(tmp))
        return tok

    @property
    def eot_id(self) -> int:
        """The id that separates documents: the tokenizer's EOS (``EOT`` for the corpus's own tokenizer)."""
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("CodeCorpus: the tokenizer has no EOS token to separate documents with")
        return int(eos)

    def _token_cache_name(self, split: str) -> str:
        if self.tokenizer_path is None:
            return f"tokens_{self.vocab_size}_{split}.npz"
        tag = hashlib.sha1(str(self.tokenizer_path).encode()).hexdigest()[:12]
        return f"tokens_{tag}_{split}.npz"

    def documents(self, split: str) -> List[np.ndarray]:
        """Token ids per document of ``split`` (int32 [n_i]), each opened by ``eot_id``."""
        cache = Path(self.cache_dir) / self._token_cache_name(split) if self.cache_dir else None
        paths = self.split_files(split)
        key = hashlib.sha1("\n".join(paths).encode()).hexdigest()
        if cache is not None and cache.is_file():
            saved = np.load(cache)
            if str(saved["key"]) == key:
                flat, offsets = saved["flat"], saved["offsets"]
                return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        eot = self.eot_id
        encodings = self.tokenizer.backend_tokenizer.encode_batch(self.texts(split), add_special_tokens=False)
        docs = [np.asarray([eot] + enc.ids, dtype=np.int32) for enc in encodings]
        if cache is not None:
            from rosa_lightning.fileio import atomic_write

            offsets = np.cumsum([0] + [len(d) for d in docs])
            flat = np.concatenate(docs) if docs else np.zeros(0, np.int32)

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
                    np.savez(f, flat=flat, offsets=offsets, key=key)

            atomic_write(cache, write)
        return docs
