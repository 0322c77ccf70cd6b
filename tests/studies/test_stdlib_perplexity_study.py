"""Seconds-long run of ``python -m experiments.stdlib_perplexity.run --smoke``: the arms train on a few stdlib files
and are scored by position on the held-out ones; results, table and plots are written with sane values."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "experiments.stdlib_perplexity.run"  # run from the repository root, as its README says


def test_stdlib_perplexity_smoke(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", MODULE, "--smoke", "--out", str(out), "--logs", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    summary, runs = results["summary"], results["runs"]
    assert list(summary) == ["global", "window", "rosa", "rosa_shift", "token"]
    for arm in summary.values():
        for key in ("overall_L", "within_window", "beyond_window", "overall_2L", "beyond_L_at_2L"):
            # a 300-token vocabulary after 4 steps: near-uniform, but finite and above 1
            assert math.isfinite(arm[key]) and 1.0 < arm[key] < 2000.0
    assert runs["global"]["window"] is None and runs["rosa"]["window"] == 16  # global stays unwindowed
    for run in runs.values():
        assert len(run["loss_by_position_1L"]) == 127 and len(run["loss_by_position_2L"]) == 255
    assert set(runs["rosa"]["diagnostics"]) == {"layer0", "layer1"} and runs["global"]["diagnostics"] == {}
    assert "Target (window + ROSA perplexity beyond the window" in (out / "results.md").read_text()
    for png in ("perplexity_vs_position.png", "learning_curves.png"):
        assert (out / png).stat().st_size > 1000
