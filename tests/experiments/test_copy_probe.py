"""The copying probe of experiments/retrofit_recovery (README "Probes"): rows whose every scored position is a copy,
a loss curve that falls when a model learns to copy, and clear errors for impossible block lengths."""
import math

import pytest
import torch

from experiments.retrofit_recovery import copy_probe


def test_rows_are_repeated_blocks_of_the_asked_lengths():
    rows = copy_probe.copy_rows(20, 64, 50, 5, 9, torch.Generator().manual_seed(0))
    assert rows.shape == (20, 64) and int(rows.max()) < 50
    for row in rows:
        periods = [p for p in range(5, 10) if torch.equal(row[p:], row[:-p])]
        assert periods  # the row repeats with one of the allowed block lengths


def test_a_short_run_prints_a_falling_curve_from_uniform(capsys):
    curve = copy_probe.main(["--steps", "60", "--every", "30", "--vocab", "16", "--lo", "4", "--hi", "6", "--T", "32",
                             "--B", "16", "--hidden", "32", "--heads", "2", "--lr", "3e-3", "--threads", "1"])
    assert [s for s, _ in curve] == [0, 30, 60]
    assert abs(curve[0][1] - math.log(16)) < 0.5 and curve[-1][1] < curve[0][1] - 0.3  # 2.78 -> 1.99 here
    assert "copied-token loss" in capsys.readouterr().out


def test_impossible_block_lengths_are_refused():
    with pytest.raises(SystemExit, match="block lengths"):
        copy_probe.parse(["--hi", "200", "--T", "128"])


def test_schedule_stages_run_in_order_then_the_main_phase():
    a = copy_probe.parse(["--vocab", "100", "--lo", "20", "--hi", "40", "--T", "128", "--warm-steps", "2",
                          "--warm-vocab", "10", "--schedule", "16:4:8:3:64,50:8:16:2"])
    phases = [copy_probe.phase(a, s) for s in range(9)]
    assert phases == [(128, 10, 8, 32)] * 2 + [(64, 16, 4, 8)] * 3 + [(128, 50, 8, 16)] * 2 + [(128, 100, 20, 40)] * 2


def test_a_short_row_stage_keeps_the_tokens_per_step_and_prints_its_own_loss(capsys):
    curve = copy_probe.main(["--steps", "4", "--every", "2", "--vocab", "16", "--lo", "10", "--hi", "12",
                             "--T", "32", "--B", "4", "--hidden", "32", "--heads", "2", "--threads", "1",
                             "--schedule", "8:2:4:2:16", "--tie", "--qk-norm-init", "2"])
    assert [s for s, _ in curve] == [0, 2, 4]
    out = capsys.readouterr().out
    assert "on the current phase (T, ids, lo, hi) (16, 8, 2, 4)" in out and out.count("current phase") == 1


@pytest.mark.parametrize("schedule, match", [("64:8:32", "vocab:lo:hi:steps"), ("x:1:2:3", "vocab:lo:hi:steps"),
                                             ("65:8:32:10", "vocab <= --vocab"), ("64:8:32:10:300", "T <= --T")])
def test_bad_schedules_are_refused(schedule, match):
    with pytest.raises(SystemExit, match=match):
        copy_probe.parse(["--vocab", "64", "--T", "128", "--schedule", schedule])


def test_row_ids_limit_each_row_to_a_subset_of_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    rows = copy_probe.copy_rows(50, 64, 1000, 30, 40, g, row_ids=5)
    assert all(len(set(r.tolist())) <= 5 for r in rows)
    assert len(set(rows.flatten().tolist())) > 100   # different rows draw different subsets
    every = copy_probe.copy_rows(50, 64, 1000, 30, 40, torch.Generator().manual_seed(0))
    assert max(len(set(r.tolist())) for r in every) > 5
    with pytest.raises(SystemExit, match="--row-ids"):
        copy_probe.parse(["--row-ids", "-1"])
