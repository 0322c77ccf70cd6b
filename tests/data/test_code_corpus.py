"""CodeCorpus: deduplication by content, the split by content hash, byte budgets, the cached file list and the
Hugging Face tokenizer directory trained on the training split."""
import json

import pytest

from rosa_lightning.data.code_corpus import SPLITS, CodeCorpus, scan_files, split_of_hash
from rosa_lightning.data.stdlib_corpus import EOT


def make_root(tmp_path, n=12):
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    words = ("alpha bravo charlie delta echo foxtrot hotel india juliet kilo lima mike november oscar papa "
             "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
    for i in range(n):
        doc = " ".join(words[(i + k) % len(words)] for k in range(12))
        body = f'"""{doc}."""\nimport os\n\n' + "".join(
            f"def {words[k % len(words)]}_{i}_{k}(value):\n    return value * {k} + {i}\n\n"
            f"total = {words[k % len(words)]}_{(i + 1) % n}_{k}(3)\n\n" for k in range(30))  # a name of another file
        (root / "pkg" / f"mod{i}.py").write_text(body)
    (root / "copy_of_mod0.py").write_text((root / "pkg" / "mod0.py").read_text())  # same bytes
    (root / "tests" / "test_x.py").write_text("def test():\n    pass\n" * 100)  # test directories are skipped
    (root / "tiny.py").write_text("x = 1\n")  # below min_bytes
    return root


def test_scan_deduplicates_and_skips(tmp_path):
    root = make_root(tmp_path)
    found = scan_files([str(root)], min_bytes=100, max_bytes=10**6)
    paths = sorted(p for p, _ in found)
    assert len(found) == 12 and len({h for _, h in found}) == 12
    assert not any("tests" in p or "tiny" in p for p in paths)
    assert sum(p.endswith(("mod0.py", "copy_of_mod0.py")) for p in paths) == 1


def test_split_by_hash_is_a_partition():
    assert split_of_hash("0" * 40, 0.1, 0.1) == "test"
    assert split_of_hash("1a" + "0" * 38, 0.1, 0.1) == "val"  # 0x1a / 256 = 0.10..0.2
    assert split_of_hash("f" * 40, 0.1, 0.1) == "train"
    with pytest.raises(ValueError, match="val_fraction"):
        split_of_hash("0" * 40, 0.6, 0.5)


def test_corpus_splits_budget_cache_and_tokenizer(tmp_path):
    root = make_root(tmp_path)
    kw = dict(cache_dir=str(tmp_path / "cache"), vocab_size=300, roots=[str(root)], val_fraction=0.25,
              test_fraction=0.25, min_file_bytes=100)
    corpus = CodeCorpus(**kw)
    files = {s: corpus.split_files(s) for s in SPLITS}
    assert sum(map(len, files.values())) == 12
    assert not set(files["train"]) & (set(files["val"]) | set(files["test"]))
    saved = json.loads((tmp_path / "cache" / "files.json").read_text())
    assert saved["splits"] == files
    tok = corpus.tokenizer
    assert tok.convert_tokens_to_ids(EOT) == 0 == tok.eos_token_id and len(tok) == 300
    assert (tmp_path / "cache" / "tokenizer_300" / "tokenizer.json").is_file()
    docs = corpus.documents("train")
    assert len(docs) == len(files["train"]) and all(d[0] == 0 for d in docs)
    again = CodeCorpus(**kw)  # the cached list, tokenizer and token ids are read back
    assert again.split_files("test") == files["test"]
    assert [d.tolist() for d in again.documents("train")] == [d.tolist() for d in docs]
    small = CodeCorpus(**{**kw, "cache_dir": None, "budget_bytes": {"train": 2000}})
    assert len(small.split_files("train")) < len(files["train"])
    with pytest.raises(ValueError, match="unknown splits"):
        CodeCorpus(**{**kw, "budget_bytes": {"training": 1}})
