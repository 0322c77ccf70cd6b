"""Seconds-long run of ``python -m experiments.gradient_quality.run``: it runs end to end and writes its outputs."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "experiments.gradient_quality.run"  # run from the repository root, as its README says


def test_gradient_quality_study_smoke(tmp_path):
    cmd = [sys.executable, "-m", MODULE, "--seeds", "1", "--probes", "4", "--train-steps", "2", "--seq-len", "64",
           "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["summary"]) == {"untrained/layer0", "untrained/layer1", "trained/layer0", "trained/layer1"}
    for summary in results["summary"].values():
        assert set(summary) == {"reference", "k_credit=matched", "cf_field=hard", "matched+hard"}
        assert set(summary["reference"]) == {"q", "k", "v"}
    assert (tmp_path / "results.md").read_text().startswith("| state | layer | option |")
    assert (tmp_path / "scatter.png").stat().st_size > 0
