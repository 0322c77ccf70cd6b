"""Evaluation runner: batching under row and token budgets, stops (samsum's newline and min length), the
cut at the first stop, batched equal to per-sample greedy decoding, and prediction files that survive a kill."""
import json

import pytest
import torch

from rosa_lightning.evaluation.runner import PredictionFile, Sample, _cut, batches, generate_batch, run_samples
from rosa_lightning.modeling import RosaQwen3ForCausalLM

from .helpers import save_backbone, save_merged, tokenizer


@pytest.fixture(scope="module")
def model_and_tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    merged = save_merged(save_backbone(root / "backbone"), root / "merged", window=16)
    return RosaQwen3ForCausalLM.from_pretrained(merged).eval(), tokenizer()


def _sample(key, n, new=4, **kw):
    return Sample(key, list(range(1, n + 1)), new, **kw)


def test_batches_sort_longest_first_and_respect_budgets():
    samples = [_sample(str(i), n) for i, n in enumerate([5, 30, 12, 30, 7])]
    groups = list(batches(samples, batch_size=2, max_batch_tokens=10_000))
    assert [[len(s.input_ids) for s in g] for g in groups] == [[30, 30], [12, 7], [5]]
    groups = list(batches(samples, batch_size=8, max_batch_tokens=70))  # (30 + 4) * 2 = 68 fits, 3 rows do not
    assert [len(g) for g in groups] == [2, 3]
    assert [len(g) for g in batches([_sample("x", 500)], 8, 10)] == [1]  # one oversize sample still runs


def test_cut_keeps_the_first_stop_and_nothing_after():
    assert _cut([5, 6, 2, 7, 2], {2}) == [5, 6, 2]
    assert _cut([5, 6], {2}) == [5, 6]


def test_samsum_stop_forces_one_token_then_stops_at_newline(model_and_tok):
    model, tok = model_and_tok
    newline = tok.encode("\n", add_special_tokens=False)[-1]
    other = 7 if newline != 7 else 8
    bias = torch.zeros(model.config.vocab_size)
    bias[newline], bias[other] = 100.0, 50.0
    handle = model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        [with_stop], _ = generate_batch(model, tok, [_sample("a", 10, new=6, stop_ids=(newline,), min_new_tokens=1)])
        [plain], _ = generate_batch(model, tok, [_sample("b", 10, new=6)])
    finally:
        handle.remove()
    assert with_stop == [other, newline]  # the newline is suppressed for the first token, then ends the answer
    assert plain == [newline] * 6


def test_batched_generation_equals_one_sample_at_a_time(model_and_tok):
    model, tok = model_and_tok
    g = torch.Generator().manual_seed(0)
    samples = [Sample(str(i), torch.randint(1, 300, (n,), generator=g).tolist(), 8) for i, n in
               enumerate([40, 25, 33])]
    batched, timing = generate_batch(model, tok, samples)
    single = [generate_batch(model, tok, [s])[0][0] for s in samples]
    assert batched == single
    assert timing.prefill_tokens == 98 and timing.samples == 3 and timing.decode_tokens == sum(len(c) - 1 for c in batched)
    assert timing.prefill_s > 0 and timing.decode_s > 0


def test_prediction_file_drops_a_cut_off_last_line_and_resumes(tmp_path, model_and_tok):
    model, tok = model_and_tok
    path = tmp_path / "p.jsonl"
    samples = [_sample(str(i), 10 + i) for i in range(4)]
    row = lambda s, pred: {"_id": s.key, "pred": pred}  # noqa: E731
    run_samples(model, tok, samples[:2], PredictionFile(path), row, batch_size=1, max_batch_tokens=1000, desc="t")
    with open(path, "a") as f:
        f.write('{"_id": "2", "pr')  # a kill in the middle of a write
    again = PredictionFile(path)
    assert sorted(again.rows) == ["0", "1"]
    run_samples(model, tok, samples, again, row, batch_size=1, max_batch_tokens=1000, desc="t")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(r["_id"] for r in lines) == ["0", "1", "2", "3"]  # nothing lost or repeated


def test_prediction_file_rejects_foreign_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"pred": "no id"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: not a prediction line"):
        PredictionFile(path)
