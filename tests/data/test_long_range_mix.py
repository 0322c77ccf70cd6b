"""The long-range mix: rows of exactly seq_len tokens, fixed by (seed, index), tasks in their natural formats
(RULER's niah_single_1 wording, LongBench's code prompt), and the LongBench-format task files built from them."""
import re

import numpy as np
import pytest

from rosa_lightning.data.long_range_mix import (CODE_PROMPT, DIGEST_FORMATS, KINDS, NEXT_LINE, NIAH_HEAD,
                                                LongRangeMixDataset, LongRangeMixSource, niah_question)
from rosa_lightning.data.stdlib_corpus import EOT
from rosa_lightning.evaluation.code_tasks import write_code_tasks
from rosa_lightning.evaluation.niah import prompt_parts
from rosa_lightning.evaluation.records import read_records
from test_code_corpus import make_root


def source(tmp_path, seq_len=128, **kw):
    root = make_root(tmp_path, n=16)
    corpus = dict(cache_dir=str(tmp_path / "cache"), vocab_size=300, roots=[str(root)], val_fraction=0.2,
                  test_fraction=0.2, min_file_bytes=100)
    return LongRangeMixSource(corpus, seq_len=seq_len, mix_fraction=0.5, **kw)


def test_niah_wording_is_rulers():
    before, after = prompt_parts("wise-business")
    assert before == NIAH_HEAD and after == niah_question("wise-business")


def test_rows_have_the_length_and_are_fixed_by_index(tmp_path):
    train, val = source(tmp_path).build(seed=3)
    assert train.num_tasks == len(train.code_rows) and len(train) == 2 * len(train.code_rows)
    n = len(train.code_rows)
    for i in (0, n, n + 1, len(train) - 1):
        item = train[i]
        assert item["input_ids"].shape == (128,) and bool(item["answer_mask"].all())
        assert (item["labels"] == item["input_ids"]).all()
    assert (train[n]["input_ids"] == train[n]["input_ids"]).all()
    rows = [train.task_row(k)[0] for k in range(30)]
    assert all(r[-1] == 0 for r in rows)  # every task ends with EOT
    kinds = {train.task_row(k)[1] for k in range(60)}
    assert {"kv", "repeat"} <= kinds <= set(KINDS) - {"niah"}  # a needle's template exceeds 128 tokens here


def test_task_texts(tmp_path):
    src = source(tmp_path, seq_len=1024, kinds={"niah": 1.0, "lcc": 1.0})  # a needle's template needs room
    train, _ = src.build(seed=0)
    tok = src.tokenizer
    texts = {kind: tok.decode(row.tolist()) for row, kind in (train.task_row(k) for k in range(20))}
    assert set(texts) == {"niah", "lcc"}
    niah = texts["niah"]
    assert NIAH_HEAD in niah and "One of the special magic numbers for " in niah
    value = niah.split("One of the special magic numbers for ")[1].split(" is: ")[1][:7]
    assert niah.endswith(f"provided text is {value}.<|endoftext|>")
    assert CODE_PROMPT in texts["lcc"] and NEXT_LINE in texts["lcc"]


def test_code_task_files_are_longbench_records(tmp_path):
    src = source(tmp_path)
    texts = src.corpus.texts("train")
    counts = write_code_tasks(tmp_path / "tasks", texts, src.tokenizer, num=3, min_tokens=60, max_tokens=600)
    assert counts["lcc"] >= 1 and counts["repobench-p"] >= 1
    for name in ("lcc", "repobench-p"):
        records = read_records(tmp_path / "tasks" / f"{name}.jsonl")
        assert len(records) == counts[name] and all(r["dataset"] == name for r in records)
        assert all(r["answers"][0].strip() and not r["answers"][0].lstrip().startswith("#") for r in records)
    lcc = read_records(tmp_path / "tasks" / "lcc.jsonl")[0]
    assert lcc["input"] == "" and lcc["context"].endswith("\n")
    repo = read_records(tmp_path / "tasks" / "repobench-p.jsonl")[0]
    assert repo["context"].startswith("# path: ") and repo["input"]
    assert np.all([len(r["context"]) > 0 for r in read_records(tmp_path / "tasks" / "repobench-p.jsonl")])


def digest_parts(task):
    """(format, first block, second block, the second block's start) of a ``digest`` task's text."""
    fmt = next(f for f in DIGEST_FORMATS if task.startswith(f[0][0]))
    (head1, head2), (tail1, tail2), _ = fmt
    start = task.rindex(head2) + len(head2)
    second = task[start: len(task) - len(tail2)]
    first = task[len(head1): len(head1) + len(second)]
    assert task[len(head1) + len(second):].startswith(tail1)
    return fmt, first, second, start


def test_digest_rows_repeat_a_random_block_far_back(tmp_path):
    """A ``digest`` task: a block of random digests, other code, the same block under another header; the copy
    distance is mostly beyond a 64-token window and reaches most of the row; every token is scored."""
    src = source(tmp_path, seq_len=512, kinds={"digest": 1.0})
    train, _ = src.build(seed=0)
    tok = src.tokenizer
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])
    distances, blocks, formats = [], set(), set()
    n = len(train.code_rows)
    for k in range(60):
        row, kind = train.task_row(k)
        assert kind == "digest" and row.shape == (512,) and row[-1] == src.corpus.eot_id
        if k < train.num_tasks:  # task_row(k) is row n + k of the dataset
            item = train[n + k]
            assert (item["input_ids"].numpy() == row).all() and (item["labels"] == item["input_ids"]).all()
            assert bool(item["answer_mask"].all())
        task = tok.decode(row.tolist()).split(EOT)[-2]
        fmt, first, second, start = digest_parts(task)
        assert first == second and count(first) >= 24
        assert re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{16}|[0-9]{5,8}", re.findall(r"[0-9a-f]{5,}", first)[-1])
        blocks.add(first)
        formats.add(fmt[0][0])
        distances.append(count(task[:start]) - count(fmt[0][0]))  # tokens from the first block to the second
    assert len(blocks) == 60 and len(formats) == len(DIGEST_FORMATS)  # random content, every format
    distances = np.asarray(distances)
    assert (distances > 64).mean() >= 0.9 and distances.max() > 300 and distances.max() < 512


def test_copy_ids_rows_repeat_a_random_block_of_ordinary_ids(tmp_path):
    """A ``copy_ids`` task: a block of 8 to budget // 4 ids from the whole vocabulary (no special id, no EOT),
    repeated to fill the task; blocks and their lengths differ from row to row."""
    src = source(tmp_path, seq_len=256, kinds={"copy_ids": 1.0})
    train, _ = src.build(seed=0)
    eot = src.corpus.eot_id
    special = set(src.tokenizer.all_special_ids) | {eot}
    periods, seen = set(), set()
    n = len(train.code_rows)
    for k in range(40):
        row, kind = train.task_row(k)
        assert kind == "copy_ids" and row.shape == (256,) and row[-1] == eot
        if k < train.num_tasks:
            assert (train[n + k]["input_ids"].numpy() == row).all()
        body = row[: -1][len(row) - 1 - (row[:-1][::-1] == eot).argmax():]  # after the task's opening EOT
        assert len(body) >= 256 // 4 and not special & set(body.tolist())
        period = next(p for p in range(8, len(body)) if (body[p:] == body[:-p]).all())
        assert 8 <= period <= max(8, (len(body) + 1) // 4 + 1) and len(body) >= 2 * period
        periods.add(period)
        seen |= set(body.tolist())
    assert len(periods) >= 10 and len(seen) > 0.5 * len(train.copy_ids)  # varied lengths, ids from everywhere


def test_copy_ids_kind_needs_ids(tmp_path):
    rows = np.zeros((4, 32), dtype=np.int32)
    with pytest.raises(ValueError, match="copy_ids"):
        LongRangeMixDataset(rows, None, lambda s: [], 0, 4, {"copy_ids": 1.0}, seed=0)
    LongRangeMixDataset(rows, None, lambda s: [], 0, 4, {"repeat": 1.0}, seed=0)  # other kinds need none
