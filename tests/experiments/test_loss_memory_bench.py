"""Seconds-long run of ``python -m experiments.loss_memory.bench``: every path measured, chunked peaks below the
full one."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "experiments.loss_memory.bench"  # run from the repository root, as its README says


def test_loss_memory_bench_smoke():
    cmd = [sys.executable, "-m", MODULE, "--tokens", "512", "--vocab", "8192", "--hidden", "64", "--dtype", "float32",
           "--chunks", "0", "64"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|") for line in run.stdout.splitlines() if line.startswith("| all") or line.startswith("| chunks")]
    assert [r[1].strip() for r in rows] == ["all logits", "chunks of 64"]
    full, chunked = (float(r[2].replace(",", "")) for r in rows)
    assert chunked < full
    assert abs(float(rows[0][3]) - float(rows[1][3])) < 1e-4  # fp32: the same loss
