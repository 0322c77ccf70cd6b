"""``experiments.retrofit_recovery.rescore``: intervals and gap shares over paired resamples, the per-sample scores
checked against the evaluation's own, and the refusals of runs it cannot rescore (its end-to-end run on a smoke
study is part of ``test_retrofit_recovery_smoke``)."""
import json
import math

import numpy as np
import pytest

from experiments.harness.statistics import paired_bootstrap_means, percentile_interval
from experiments.retrofit_recovery import rescore


def scores_of(values):
    return {f"s{i}": float(v) for i, v in enumerate(values)}


def test_shares_and_intervals_keep_the_pairing_of_the_samples():
    rng = np.random.default_rng(0)
    global_ = rng.uniform(40, 100, size=60)
    window = global_ - rng.uniform(20, 40, size=60)
    half = (global_ + window) / 2
    labels = ["global", "window", "same_as_global", "halfway", "noise"]
    noise = rng.uniform(0, 100, size=60)
    out = rescore.summarize_task(labels, [scores_of(x) for x in (global_, window, global_, half, noise)], (0, 1),
                                 num_boot=500)
    assert out["samples"] == 60 and out["gap_resolved"]
    assert out["references"] == {"global": "global", "window": "window"}
    arms = out["arms"]
    assert "share" not in arms["global"] and "share" not in arms["window"]
    # paired resamples: an arm equal to global sample by sample recovers exactly all of the gap in every resample
    assert arms["same_as_global"]["share"] == pytest.approx(1.0)
    assert arms["same_as_global"]["share_ci"] == pytest.approx((1.0, 1.0))
    assert arms["halfway"]["share"] == pytest.approx(0.5)
    assert arms["halfway"]["share_ci"] == pytest.approx((0.5, 0.5))
    lo, hi = arms["noise"]["share_ci"]
    assert lo < arms["noise"]["share"] < hi and hi - lo > 0.2
    lo, hi = arms["global"]["ci"]
    assert lo < global_.mean() < hi
    assert out["gap"]["value"] == pytest.approx((global_ - window).mean())


def test_an_unresolved_gap_leaves_the_share_intervals_blank():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 100, size=40), rng.uniform(0, 100, size=40)
    out = rescore.summarize_task(["global", "window", "arm"], [scores_of(x) for x in (a, b, a)], (0, 1), num_boot=300)
    if out["gap"]["ci"][0] <= 0:
        assert not out["gap_resolved"]
        assert all(math.isnan(x) for x in out["arms"]["arm"]["share_ci"])
    same = rescore.summarize_task(["global", "window", "arm"], [scores_of(a)] * 3, (0, 1), num_boot=50)
    assert not same["gap_resolved"] and math.isnan(same["arms"]["arm"]["share"])


def test_arms_scored_on_other_samples_are_refused():
    with pytest.raises(RuntimeError, match="other samples"):
        rescore.summarize_task(["global", "window"], [{"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0}], (0, 1), 10)


def test_paired_bootstrap_resamples_the_same_columns_for_every_arm():
    x = np.arange(10.0)
    boots = paired_bootstrap_means(np.stack([x, 2 * x + 1]), num_boot=200, seed=3)
    assert boots.shape == (200, 2)
    np.testing.assert_allclose(boots[:, 1], 2 * boots[:, 0] + 1)
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan, np.nan])))
    assert percentile_interval(np.array([1.0, np.nan, 3.0]), level=1.0) == (1.0, 3.0)
    with pytest.raises(ValueError, match="arms, samples"):
        paired_bootstrap_means(np.zeros((2, 0)))


def write_eval(tmp_path, preds, reported):
    eval_dir = tmp_path / "eval"
    (eval_dir / "predictions").mkdir(parents=True)
    rows = [{"_id": f"niah-{i}", "pred": p, "answers": ["1234567"]} for i, p in enumerate(preds)]
    (eval_dir / "predictions" / "niah_single_1_512.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (eval_dir / "results.json").write_text(json.dumps({"niah": {"512": reported}, "longbench": {}}))
    return eval_dir


def test_sample_scores_must_average_to_the_reported_score(tmp_path):
    eval_dir = write_eval(tmp_path, ["The number is 1234567.", "none", "1234567", "7654321"], 50.0)
    assert rescore.sample_scores(eval_dir, "niah_single_1_512") == {"niah-0": 100.0, "niah-1": 0.0,
                                                                     "niah-2": 100.0, "niah-3": 0.0}
    (eval_dir / "results.json").write_text(json.dumps({"niah": {"512": 75.0}, "longbench": {}}))
    with pytest.raises(RuntimeError, match="reported 75"):
        rescore.sample_scores(eval_dir, "niah_single_1_512")


def test_runs_it_cannot_rescore_are_refused(tmp_path):
    assert rescore.parse_run("best=logs/x/stage_b")[0] == "best"
    assert rescore.parse_run("logs/x/stage_b")[0] is None
    with pytest.raises(SystemExit, match="not an arm"):
        rescore.collect_runs([str(tmp_path / "logs" / "model")])
    (tmp_path / "logs" / "global").mkdir(parents=True)
    with pytest.raises(SystemExit, match="not a finished arm"):
        rescore.collect_runs([str(tmp_path / "logs" / "global")])
    with pytest.raises(SystemExit, match="at least 1"):
        rescore.parse_args(["x", "--out", "y", "--niah-samples", "0"])


def test_an_evaluation_folder_of_other_settings_is_not_reused(tmp_path):
    eval_dir = tmp_path / "out" / "arms" / "best"
    eval_dir.mkdir(parents=True)
    (eval_dir / "rescore.json").write_text(json.dumps({"run": "../logs/stage_b", "niah": [512], "niah_samples": 100}))
    run = {"label": "best", "logs": tmp_path / "logs", "arm": "stage_b"}
    with pytest.raises(SystemExit, match="label the run otherwise"):
        rescore.evaluate_run(run, None, tmp_path / "tasks", [512, 1024], 100, tmp_path / "out")
    with pytest.raises(SystemExit, match="label the run otherwise"):  # same settings, another run under that label
        rescore.evaluate_run({**run, "arm": "rosa_teacher"}, None, tmp_path / "tasks", [512], 100, tmp_path / "out")


def test_a_kept_best_model_is_rescored_as_its_arm(tmp_path):
    from experiments.retrofit_recovery import run as study

    logs = tmp_path / "logs"
    for arm in ("global", "window", "stage_b"):
        (logs / arm).mkdir(parents=True)
        (logs / arm / "result.json").write_text("{}")
    (logs / "backbone").mkdir()
    (logs / "backbone" / "model.safetensors").write_bytes(b"weights")
    recorded = {k: v for k, v in study.settings(False, logs).items() if k != "extra"}  # as the study writes it
    (logs / "study.json").write_text(json.dumps(recorded))
    best = logs / "stage_b" / "best" / "niah_single_1_1024"
    best.mkdir(parents=True)
    specs = [str(logs / "global"), str(logs / "window"), str(best)]
    with pytest.raises(SystemExit, match="not a kept best model"):
        rescore.collect_runs(specs)
    (best / "best.json").write_text(json.dumps({"step": 4, "score": 10.0}))
    runs = rescore.collect_runs(specs)
    assert [(r["label"], r["arm"], r["model_dir"]) for r in runs] == [
        ("global", "global", None), ("window", "window", None),
        ("stage_b_best_niah_single_1_1024", "stage_b", best.resolve())]
    assert rescore.collect_runs([*specs[:2], f"peak={best}"])[2]["label"] == "peak"
