"""Stdlib corpus: file list, fixed split, cached tokenizer, in-document chunks."""
import numpy as np
import pytest

from rosa_lightning.data.stdlib_corpus import (
    EOT, StdlibCorpus, TokenChunkDataset, split_of, stdlib_files, stdlib_root,
)

FEW = ["bisect.py", "colorsys.py", "keyword.py", "this.py", "heapq.py", "copy.py", "glob.py", "shlex.py"]


@pytest.fixture(scope="module")
def files():
    return stdlib_files()


def test_file_list_excludes_tests_and_site_packages(files):
    assert "os.py" in files and "json/decoder.py" in files
    assert not any(f.startswith("test/") or "/tests/" in f or "site-packages" in f for f in files)
    assert files == sorted(files)
    assert len(stdlib_files(include_tests=True)) > len(files)


def test_split_is_fixed_by_name_and_roughly_the_fraction(files):
    assert all(split_of(f) == split_of(f) for f in files[:50])
    held = [f for f in files if split_of(f, 0.1) == "val"]
    assert 0.05 < len(held) / len(files) < 0.15
    # a larger fraction only adds files to the held-out set (a threshold on one hash)
    assert set(held) <= {f for f in files if split_of(f, 0.3) == "val"}


def test_tokenizer_is_trained_on_train_split_and_cached(tmp_path):
    path = tmp_path / "tok.json"
    corpus = StdlibCorpus(tokenizer_path=str(path), vocab_size=300, held_out_fraction=0.3, files=FEW)
    train, val = corpus.split_files("train"), corpus.split_files("val")
    assert train and val and not set(train) & set(val) and sorted(train + val) == sorted(FEW)
    tok = corpus.tokenizer
    assert path.is_file() and tok.get_vocab_size() == 300 and corpus.eot_id == 0
    text = (stdlib_root() / val[0]).read_text()
    assert tok.decode(tok.encode(text).ids) == text  # byte-level BPE is lossless on unseen text
    mtime = path.stat().st_mtime_ns
    again = StdlibCorpus(tokenizer_path=str(path), vocab_size=300, held_out_fraction=0.3, files=FEW)
    assert again.tokenizer.get_vocab() == tok.get_vocab() and path.stat().st_mtime_ns == mtime
    docs = corpus.documents("val")
    assert len(docs) == len(val) and all(d.dtype == np.int32 and d[0] == tok.token_to_id(EOT) for d in docs)


def test_chunks_start_inside_documents():
    docs = [np.arange(10, dtype=np.int32), np.arange(100, 125, dtype=np.int32), np.arange(3, dtype=np.int32)]
    ds = TokenChunkDataset(docs, seq_len=8)
    assert len(ds) == 1 + 3
    assert ds[0]["input_ids"].tolist() == list(range(8))
    assert ds[3]["input_ids"].tolist() == list(range(116, 124))
    assert ds[3]["labels"].tolist() == ds[3]["input_ids"].tolist() and bool(ds[3]["answer_mask"].all())
    assert len(TokenChunkDataset(docs, seq_len=8, max_chunks_per_doc=1)) == 2
    with pytest.raises(ValueError, match="seq_len"):
        TokenChunkDataset(docs, seq_len=1000)


def test_source_builds_train_and_val(tmp_path):
    from rosa_lightning.data.stdlib_corpus import StdlibSource

    corpus = dict(tokenizer_path=str(tmp_path / "tok.json"), vocab_size=300, held_out_fraction=0.3, files=FEW)
    train, val = StdlibSource(corpus, seq_len=64).build(seed=0)
    assert len(train) > len(val) > 0
    assert train[0]["input_ids"].shape == (64,) and int(train[0]["input_ids"].max()) < 300
