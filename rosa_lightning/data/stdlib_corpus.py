"""Real long documents without downloads: the Python standard library's source files.

Every file is one document. The held-out split is fixed by the file's path relative to the stdlib root (a hash, so
it does not depend on which files exist or their order), and the byte-level BPE tokenizer is trained locally with
HF ``tokenizers`` on the training split only, then cached at a path the caller chooses.

Typical use::

    corpus = StdlibCorpus(tokenizer_path="data/stdlib_bpe_4096.json", vocab_size=4096)
    train = TokenChunkDataset(corpus.documents("train"), seq_len=1024)
    val = TokenChunkDataset(corpus.documents("val"), seq_len=1024)

Each chunk starts at a document boundary or a multiple of seq_len inside one document, so position t of a chunk is
really t tokens into text of that document: perplexity by position beyond the attention window measures long-range
use. Items are dicts ``input_ids`` int64 [T], ``labels`` int64 [T] (= input_ids, all scored) and ``answer_mask``
bool [T] (all True), the same keys as the synthetic tasks.
"""
from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rosa_lightning.fileio import atomic_write

EOT = "<|endoftext|>"
SPLITS = ("train", "val")


def stdlib_root() -> Path:
    """The directory of this interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Optional[Path] = None, include_tests: bool = False) -> List[str]:
    """Relative POSIX paths of the ``.py`` files under ``root`` (default: the stdlib), sorted.

    Excludes ``site-packages`` and ``__pycache__``; excludes ``test``/``tests``/``idle_test`` directories unless
    ``include_tests`` (about 60 % of the bytes, with many generated or deliberately odd files).
    """
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib_files: root {root} is not a directory")
    skip = {"site-packages", "__pycache__"} | (set() if include_tests else {"test", "tests", "idle_test"})
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if skip.isdisjoint(rel.parts[:-1]):
            files.append(rel.as_posix())
    return sorted(files)


def split_of(rel_path: str, held_out_fraction: float = 0.1) -> str:
    """``"val"`` for a fixed ``held_out_fraction`` of file names (by SHA-1 of the relative path), else ``"train"``."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    h = int.from_bytes(hashlib.sha1(rel_path.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "val" if h < held_out_fraction else "train"


def read_document(path: Path) -> str:
    # stdlib sources are UTF-8 by PEP 3120; replace the odd undecodable byte rather than drop the file
    return Path(path).read_text(encoding="utf-8", errors="replace")


def train_tokenizer(texts: Sequence[str], vocab_size: int, path: Optional[Path] = None):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts``; ``EOT`` is id 0.

    With ``path``: load it when it exists and has ``vocab_size`` tokens, else train and save there (written to a
    temporary name and renamed, so concurrent readers never see a partial file).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must exceed the 256 byte symbols plus {EOT}, got {vocab_size}")
    if path is not None and Path(path).is_file():
        tok = Tokenizer.from_file(str(path))
        if tok.get_vocab_size() == vocab_size:
            return tok
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if path is not None:
        atomic_write(path, lambda tmp: tok.save(str(tmp)))
    return tok


@dataclass
class StdlibCorpus:
    """The stdlib as documents, with a fixed split and a cached local BPE tokenizer.

    ``files``: explicit relative paths to use instead of all of :func:`stdlib_files` (tests use a few).
    ``tokenizer_path``: where the tokenizer is cached; ``None`` trains it in memory on every use.
    """

    tokenizer_path: Optional[str] = None
    vocab_size: int = 4096
    held_out_fraction: float = 0.1
    include_tests: bool = False
    root: Optional[str] = None
    files: Optional[List[str]] = None

    def __post_init__(self) -> None:
        self._root = stdlib_root() if self.root is None else Path(self.root)
        self._tokenizer = None

    def split_files(self, split: str) -> List[str]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        names = self.files if self.files is not None else stdlib_files(self._root, self.include_tests)
        return [f for f in sorted(names) if split_of(f, self.held_out_fraction) == split]

    def texts(self, split: str) -> List[str]:
        return [read_document(self._root / f) for f in self.split_files(split)]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            texts = self.texts("train")
            if not texts:
                raise ValueError("StdlibCorpus: the training split is empty; add files or lower held_out_fraction")
            self._tokenizer = train_tokenizer(texts, self.vocab_size, self.tokenizer_path)
        return self._tokenizer

    @property
    def eot_id(self) -> int:
        return self.tokenizer.token_to_id(EOT)

    def documents(self, split: str) -> List[np.ndarray]:
        """Token ids per document of ``split`` (int32 [n_i]), each opened by the EOT id as a BOS."""
        tok, eot = self.tokenizer, self.eot_id
        encodings = tok.encode_batch(self.texts(split))
        return [np.asarray([eot] + enc.ids, dtype=np.int32) for enc in encodings]


class TokenChunkDataset(Dataset):
    """Fixed-length chunks of long documents, each starting at a multiple of ``seq_len`` inside its document.

    A document contributes ``len // seq_len`` chunks (at most ``max_chunks_per_doc``); shorter remainders and
    documents are dropped, so every position of every chunk has its full in-document history within the chunk.
    """

    def __init__(self, documents: Sequence[np.ndarray], seq_len: int, max_chunks_per_doc: Optional[int] = None):
        if seq_len < 2:
            raise ValueError(f"TokenChunkDataset.seq_len must be >= 2, got {seq_len}")
        self.seq_len = int(seq_len)
        self._index = []  # (document, start)
        self._docs = list(documents)
        for d, doc in enumerate(self._docs):
            n = len(doc) // self.seq_len
            if max_chunks_per_doc is not None:
                n = min(n, max_chunks_per_doc)
            self._index.extend((d, i * self.seq_len) for i in range(n))
        if not self._index:
            raise ValueError(f"TokenChunkDataset: no document has seq_len={seq_len} tokens")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        d, start = self._index[index]
        ids = torch.from_numpy(self._docs[d][start : start + self.seq_len].astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone(), "answer_mask": torch.ones(self.seq_len, dtype=torch.bool)}


class StdlibSource:
    """The corpus as a DataModule source: ``build(seed) -> (train, val)`` chunk datasets of ``seq_len`` tokens.

    ``corpus`` is a :class:`StdlibCorpus` (or its keyword arguments as a dict, as Hydra passes them). The split is
    fixed by file name, so ``seed`` changes nothing here; the DataModule's seed drives the shuffling.
    """

    def __init__(self, corpus, seq_len: int = 1024, max_chunks_per_doc: Optional[int] = None) -> None:
        self.corpus = corpus if isinstance(corpus, StdlibCorpus) else StdlibCorpus(**dict(corpus))
        self.seq_len = int(seq_len)
        self.max_chunks_per_doc = max_chunks_per_doc

    @property
    def vocab_size(self) -> int:
        return self.corpus.vocab_size

    def build(self, seed: int):
        del seed  # the split and the chunks are fixed
        return tuple(
            TokenChunkDataset(self.corpus.documents(split), self.seq_len, self.max_chunks_per_doc) for split in SPLITS
        )
