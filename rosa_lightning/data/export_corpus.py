"""Write the Python standard library's sources as a jsonl corpus of long documents.

A stand-in for the real long-document training data on machines that have none (no network, no
hub): every ``.py`` file of the chosen split is one ``{"text": ...}`` line, so ``HFTextSource``
(``conf/data/hf_text.yaml``) tokenises and packs it like any other corpus. The recipe then runs end
to end, e.g.::

    python -m rosa_lightning.data.export_corpus data/longbench_train
    python train.py experiment=longbench trainer.fast_dev_run=true model.backbone=<tiny local dir>
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from rosa_lightning.fileio import atomic_write

from .stdlib_corpus import StdlibCorpus

CORPUS_FILE = "stdlib.jsonl"


def export_stdlib_jsonl(out_dir: os.PathLike | str, split: str = "train", files: Optional[Sequence[str]] = None) -> Path:
    """Write ``out_dir/stdlib.jsonl`` (one document per stdlib file of ``split``) atomically; returns its path."""
    corpus = StdlibCorpus(files=list(files) if files is not None else None)
    texts = corpus.texts(split)
    if not texts:
        raise ValueError(f"no stdlib files in split {split!r}")
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for text in texts:
                f.write(json.dumps({"text": text}) + "\n")

    return atomic_write(Path(out_dir) / CORPUS_FILE, write)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Export the Python stdlib sources as a jsonl corpus (field 'text').")
    parser.add_argument("out_dir", help="directory to write stdlib.jsonl into (e.g. data/longbench_train)")
    parser.add_argument("--split", default="train", choices=("train", "val"))
    args = parser.parse_args(argv)
    path = export_stdlib_jsonl(args.out_dir, args.split)
    print(f"wrote {sum(1 for _ in open(path, encoding='utf-8'))} documents to {path}")


if __name__ == "__main__":
    main()
