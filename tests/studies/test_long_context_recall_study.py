"""Seconds-long run of ``python -m experiments.long_context_recall.run --smoke``: every arm trains, is evaluated at
L..8L, and the results, table and plots are written with sane values."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "experiments.long_context_recall.run"  # run from the repository root, as its README says


def test_long_context_recall_smoke(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", MODULE, "--smoke", "--tasks", "mqar,passkey", "--out", str(out),
           "--logs", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert set(summary) == {"mqar", "passkey"}
    assert set(summary["mqar"]["accuracy"]) == {"global", "window", "rosa", "rosa_options", "rosa_shift", "token",
                                                "both", "protocol", "global_4x", "converted"}
    assert summary["mqar"]["lengths"] == [128, 256, 512, 1024]
    for task in summary.values():
        for acc in task["accuracy"].values():
            assert len(acc) == 4 and all(0.0 <= a <= 1.0 for a in acc.values())
    runs = results["runs"]
    assert runs["mqar/global"]["window"] is None and runs["mqar/rosa"]["window"] == 16  # global stays unwindowed
    # diagnostics exist exactly for the arms with ROSA branches, per layer, at L and 4L
    assert set(runs["mqar/rosa"]["diagnostics"]["1L"]) == {"layer0", "layer1"}
    assert runs["mqar/window"]["diagnostics"]["1L"] == {} and runs["mqar/token"]["diagnostics"]["1L"] == {}
    d = runs["mqar/rosa"]["diagnostics"]["4L"]["layer1"]
    assert 0.0 <= d["right_slot"] <= d["any_route_right"] <= 1.0 and 0.0 < d["valid_tau"] <= 1.0
    assert runs["mqar/rosa"]["grad_norms_final"]["l1_e1"] > 0
    assert runs["mqar/protocol"]["stage"] == "B"  # stage A handed over to stage B within the run
    assert any(v > 0 for v in runs["mqar/rosa"]["curves"]["rosa_grad/l1_e1"][1])
    assert math.isfinite(runs["mqar/global"]["curves"]["val/answer_acc"][1][-1])
    table = (out / "results.md").read_text()
    assert "| window + ROSA |" in table and "### Targets" in table
    assert (out / "results.csv").read_text().startswith("task,arm,seq_len,answer_acc")
    for png in ("accuracy_vs_length.png", "learning_curves.png"):
        assert (out / png).stat().st_size > 1000
