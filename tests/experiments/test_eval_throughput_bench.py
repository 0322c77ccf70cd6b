"""Seconds-long run of ``python -m experiments.eval_throughput.bench``: every arm and length measured and written."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "experiments.eval_throughput.bench"  # run from the repository root, as its README says


def test_eval_throughput_bench_smoke(tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", MODULE, "--lengths", "48", "96", "--new-tokens", "4", "--window", "16",
           "--repeats", "1", "--device", "cpu", "--torch-threads", "1", "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["arm"], r["length"]) for r in rows] == [(a, n) for a in ("global", "window", "window+rosa") for n in (48, 96)]
    for r in rows:
        assert r["prefill_tokens"] == r["length"] and r["decode_tokens"] == 3 and r["decode_tokens_per_s"] > 0
    assert "| window+rosa | 96 |" in run.stdout
