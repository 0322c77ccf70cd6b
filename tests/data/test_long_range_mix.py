"""The long-range mix: rows of exactly seq_len tokens, fixed by (seed, index), tasks in their natural formats
(RULER's niah_single_1 wording, LongBench's code prompt), and the LongBench-format task files built from them."""
import numpy as np

from rosa_lightning.data.long_range_mix import (CODE_PROMPT, KINDS, NEXT_LINE, NIAH_HEAD, LongRangeMixSource,
                                                niah_question)
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
