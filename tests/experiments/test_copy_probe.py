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
