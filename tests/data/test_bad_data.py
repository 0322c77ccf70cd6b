"""Bad data is named: the file, the line (or row), the field and what was expected; empty files and
directories say so; ids outside the vocabulary are caught before the embedding; a hung worker times out."""
import json
import time

import pytest
import torch

from rosa_lightning.data.datamodule import RosaDataModule
from rosa_lightning.data.loading import load_hf_split
from rosa_lightning.data.resumable import DataLoaderTimeout
from rosa_lightning.data.sources import HFTextSource
from rosa_lightning.data.validation import DataError
from tests.framework.conftest import _word_tokenizer


def _jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _build(path):
    return HFTextSource(str(path), tokenizer=_word_tokenizer(), seq_len=4, val_rows=1).build(0)


GOOD = json.dumps({"text": "w1 w2 w3 w4 w5 w6 w7 w8"})


@pytest.mark.parametrize("bad, problem", [
    (json.dumps({"txt": "w1"}), r"line 3: has no field 'text' \(fields: \['txt'\]\); expected a string"),
    (json.dumps({"text": 5}), r"line 3: field 'text' is int 5, expected a string"),
    (json.dumps({"text": None}), r"line 3: field 'text' is NoneType None, expected a string"),
    (json.dumps(["w1"]), r"line 3: is a JSON list, expected an object with a 'text' field"),
])
def test_bad_record_names_file_line_and_field(tmp_path, bad, problem):
    path = _jsonl(tmp_path / "docs.jsonl", [GOOD, "", bad, GOOD])  # a blank line: the count is of lines
    with pytest.raises(DataError, match=f"data file '{path}', {problem}"):
        _build(path)


def test_bad_record_in_a_directory_names_the_file(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [GOOD] * 3)
    bad = _jsonl(tmp_path / "b.jsonl", [GOOD, json.dumps({"body": "w1"})])
    with pytest.raises(DataError, match=f"data file '{bad}', line 2: has no field 'text'"):
        _build(tmp_path)


def test_corrupt_line_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "docs.jsonl", [GOOD, GOOD, '{"text": "w1 w2', GOOD])
    with pytest.raises(DataError, match=f"data file '{path}', line 3: not valid JSON"):
        load_hf_split(str(path), "train", text_field="text")


def test_empty_file_and_empty_directory_say_so(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"data file '.*empty.jsonl' is empty"):
        load_hf_split(str(tmp_path / "empty.jsonl"), "train")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "README.md").write_text("no data here")
    with pytest.raises(DataError, match=r"data.source.path='.*nothing': the directory holds no data files"):
        load_hf_split(str(tmp_path / "nothing"), "train")


class _Hangs(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i >= 4:
            time.sleep(60)  # a worker stuck in the data source
        return {"input_ids": torch.zeros(8, dtype=torch.long)}


class _HangingSource:
    def build(self, seed):
        return _Hangs(), _Hangs()


def test_hung_worker_ends_in_a_named_timeout():
    dm = RosaDataModule(_HangingSource(), batch_size=4, num_workers=1, prefetch_factor=1, timeout_s=1.0,
                        shuffle=False)
    t0 = time.perf_counter()
    with pytest.raises(DataLoaderTimeout, match=r"no train batch arrived from the DataLoader workers within 1 s "
                                                r"\(data.timeout_s\)"):
        for _ in dm.train_dataloader():
            pass
    assert time.perf_counter() - t0 < 20


def test_timeout_is_validated():
    with pytest.raises(ValueError, match="data.timeout_s"):
        RosaDataModule(_HangingSource(), timeout_s=-1)
