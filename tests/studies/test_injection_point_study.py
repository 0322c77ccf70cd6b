"""Seconds-long run of ``python -m experiments.injection_point.run --smoke``: both injection points train through
the framework's configs on MQAR and the stdlib corpus, the window arm beside them; a second run reuses every arm."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "experiments.injection_point.run"  # run from the repository root, as its README says


def test_injection_point_smoke(tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    cmd = [sys.executable, "-m", MODULE, "--smoke", "--out", str(out), "--logs", str(logs)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    summary, runs = results["summary"], results["runs"]
    assert set(summary["mqar"]) == {"post_attn", "post_mlp"}
    assert set(summary["stdlib"]) == {"post_attn", "post_mlp", "window"}
    # each arm ran with the injection it names (the override reached the model config)
    assert runs["mqar_post_mlp_seed0"]["injection"] == "post_mlp" and runs["stdlib_post_attn"]["injection"] == "post_attn"
    for r in summary["mqar"].values():
        assert all(0.0 <= a <= 1.0 for a in r["final_acc"])
    for r in summary["stdlib"].values():
        assert all(math.isfinite(r[k]) and 1.0 < r[k] < 2000.0 for k in ("ppl_all", "ppl_within", "ppl_beyond"))
    # the two injections are different models: same seed and data, different held-out perplexity
    assert summary["stdlib"]["post_attn"]["ppl_all"] != summary["stdlib"]["post_mlp"]["ppl_all"]
    assert (out / "curves.png").stat().st_size > 1000 and "post_mlp" in (out / "results.md").read_text()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Trainer.fit" not in again.stderr + again.stdout
    assert json.loads((out / "results.json").read_text())["summary"] == summary
