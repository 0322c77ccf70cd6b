"""The studies' harness (``experiments.harness``): answer slots of MQAR / passkey, per-layer retrieval statistics,
the job pool's dependencies, metric curves and tables, and the agreement statistics of finite-difference probes."""
import math

import numpy as np
import pytest
import torch

from experiments.harness.diagnostics import _layer_stats, answer_sources
from experiments.harness.evaluate import bucket_means, task_at_length
from experiments.harness.report import markdown_table
from experiments.harness.runs import Job, check_choices, curve, run_pool
from experiments.harness.statistics import StreamAgreement, pearson, ranks
from rosa_lightning.data.synthetic import MQAR, Passkey


def _ex(task, seed):
    ex = task.sample(np.random.default_rng(seed))
    return torch.from_numpy(ex["input_ids"])[None], torch.from_numpy(ex["answer_mask"])[None]


def test_answer_sources_mqar_is_the_value_after_the_key_in_the_pair_section():
    # the docstring example of MQAR: pairs (4->13) at t=1,2 and (5->8) at t=3,4; queries 5 8 4 13 at t=16..19
    ids, mask = _ex(MQAR(seq_len=20, num_pairs=2, num_keys=6, num_values=6, num_filler=4), 1)
    src = answer_sources(ids, mask)
    assert src[0, 16] == 4 and src[0, 18] == 2  # predicting 8 from key 5 at t=16: the 8 at t=4
    assert (src[0] >= 0).sum() == 2


def test_answer_sources_skip_recurring_filler_occurrences():
    # recurring keys: key 4 recurs at t=10 followed by a wrong value; the binding slot stays the pair section
    ids, mask = _ex(MQAR(seq_len=24, num_pairs=2, num_keys=6, num_values=6, num_filler=4,
                         filler="recurring_keys", key_recurrences=1), 1)
    src = answer_sources(ids, mask)
    assert src[0, 22] == 2 and src[0, 20] == 4


def test_answer_sources_passkey_digits_of_the_needle():
    ids, mask = _ex(Passkey(seq_len=20, passkey_len=3, depth=0.5, num_filler=4, filler="repeat", sentence_len=3), 0)
    src = answer_sources(ids, mask)  # needle KEY 13 11 10 at t=5..8, answers at t=17..19
    assert src[0, 16:19].tolist() == [6, 7, 8]


def test_layer_stats_counts_right_slots_s_and_s_plus_1():
    src = torch.full((1, 6), -1)
    src[0, 4] = 1  # position 4 predicts an answer bound at t=1
    tau = torch.tensor([[[0, -1, 0, 0, 1, 0], [0, 0, 0, 0, 2, 0], [-1, -1, -1, -1, 3, -1]]])  # [1, 3, 6]
    stats = _layer_stats(tau, src)
    assert stats["right_slot"] == pytest.approx(2 / 3) and stats["any_route_right"] == 1.0
    assert stats["valid_tau"] == pytest.approx(12 / 18) and stats["valid_tau_at_queries"] == 1.0


def _double(x):
    return 2 * x


def test_run_pool_respects_dependencies_in_process_and_spawned():
    jobs = {"b": Job(_double, {"x": 2}, after=("a",)), "a": Job(_double, {"x": 1})}
    assert run_pool(jobs, procs=1, log=lambda m: None) == {"a": 2, "b": 4}
    assert run_pool(jobs, procs=2, log=lambda m: None) == {"a": 2, "b": 4}
    with pytest.raises(ValueError, match="unknown dependencies"):
        run_pool({"a": Job(_double, {"x": 1}, after=("zz",))}, procs=1)


def test_curve_table_buckets_and_task_length():
    rows = [{"step": 0, "val/x": 0.5}, {"step": 5, "train/loss": 1.0}, {"step": 9, "val/x": 0.7}]
    assert curve(rows, "val/x") == ([0, 9], [0.5, 0.7])
    md = markdown_table(["a", "b"], [["x", 0.12345], ["y", None]], digits=2)
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x | 0.12 |", "| y | — |"]
    means = bucket_means(torch.tensor([1.0, 3.0, float("nan"), 5.0]), [0, 2, 3, 4])
    assert means[:1] == [2.0] and math.isnan(means[1]) and means[2] == 5.0
    assert task_at_length(MQAR(seq_len=64), 256).seq_len == 256


def test_check_choices_names_the_flag_and_the_valid_names():
    check_choices("--arms", ["a", "b"], ["a", "b", "c"])
    with pytest.raises(SystemExit, match=r"--arms: unknown \['x', 'y'\]; choose from \['a', 'b'\]"):
        check_choices("--arms", ["y", "a", "x"], ["a", "b"])


def test_agreement_statistics():
    rng = np.random.default_rng(0)
    fd = rng.normal(size=200)
    s = StreamAgreement("q", fd=fd, est=np.exp(fd), where=np.zeros((200, 3), dtype=np.int64), first_order=2 * fd)
    assert s.spearman == pytest.approx(1.0)  # monotone, not linear
    assert 0.5 < s.pearson < 0.95
    lo, hi = s.pearson_ci()
    assert lo <= s.pearson <= hi and hi - lo < 0.3
    assert s.ceiling == pytest.approx(1.0) and s.est_vs_first_order == pytest.approx(s.pearson)
    ties = StreamAgreement("k", fd=np.array([1.0, 1.0, 2.0, 3.0]), est=np.array([5.0, 5.0, 6.0, 7.0]),
                           where=np.zeros((4, 3), dtype=np.int64))
    assert ties.spearman == pytest.approx(1.0) and np.isnan(ties.ceiling)
    assert set(s.summary()) >= {"pearson_lo", "pearson_hi", "spearman", "ceiling", "est_vs_first_order"}


def test_pearson_over_informative_entries_and_average_ranks():
    a, b = np.array([0.0, 1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 4.0, 6.5, 0.0])
    assert pearson(a, b) == pytest.approx(np.corrcoef(a[1:4], b[1:4])[0, 1])  # both-zero entries are left out
    assert math.isnan(pearson(a[:3], b[:3]))  # fewer than 3 informative entries
    assert ranks(np.array([3.0, 1.0, 1.0, 2.0])).tolist() == [4.0, 1.5, 1.5, 3.0]
