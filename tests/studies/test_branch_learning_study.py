"""Seconds-long run of ``python -m experiments.branch_learning.run`` (arms + harness): it runs end to end and
writes its outputs."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "experiments.branch_learning.run"  # run from the repository root, as its README says


def test_branch_learning_study_smoke(tmp_path):
    arms = ["reference", "best", "best_relaxed", "reference_m8_curriculum", "best_layer1_aux"]
    cmd = [sys.executable, "-m", MODULE, "--arms", *arms, "--steps", "2", "--seq-len", "64",
           "--batch-size", "2", "--log-every", "1", "--eval-num", "2", "--probes", "3", "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["arms"]) == set(arms)
    for r in results["arms"].values():
        assert [c["step"] for c in r["curve"]] == [1, 2]
        assert len(r["curve"][0]["right_slot"]) == len(r["arm"]["rosa"].get("rosa_layers", [0, 1]))
        assert 0.0 <= r["final"]["acc_x4"] <= 1.0
    assert results["harness_arms"] == ["best"]
    assert set(results["harness"]) == {"untrained", "learning", "trained"}
    for per_layer in results["harness"].values():
        assert set(per_layer) == {"layer0", "layer1"}
        assert {"reference", "matched+e0_term", "hard+e0_term", "relaxed", "per_seed"} <= set(per_layer["layer0"])
        q = per_layer["layer0"]["reference"]["q"]
        assert {"pearson", "pearson_lo", "spearman", "ceiling", "est_vs_first_order"} <= set(q)
    raw = results["harness_raw"]["trained"]["best"]["layer0"]["q"]
    assert len(raw["fd"]) == len(raw["first_order"]) == len(raw["est"]["relaxed"]) > 0
    assert (tmp_path / "results.md").read_text().startswith("## MQAR arms")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_loop_overhead_measures_both_paths():
    cmd = [sys.executable, "-m", "experiments.branch_learning.loop_overhead", "--short", "1", "--long", "2",
           "--repeats", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| study loop", "| Lightning"))]
    assert len(rows) == 2, proc.stdout
    for row in rows:  # one step between the short and the long run: a number, its sign left to the machine's noise
        float(row.split("|")[2])
