"""Helpers of the multi-process tests: ``python train.py`` with two CPU ranks, as a user runs it, and what the
run leaves behind (each rank's probe record, the logged losses)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["logger=csv", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0",
          "data.batch_size=4", "data.source.num_train=64", "data.seq_len=64", "data.source.task.num_pairs=4",
          "callbacks.model_checkpoint.every_n_train_steps=4", "trainer.max_epochs=4",
          "model.scheduler.warmup_steps=1"]
STOP_AT_5 = ["+callbacks.stop._target_=tests.framework.ddp_probe.StopAtStep", "+callbacks.stop.step=5"]


def run_train(trainer: str, run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py trainer=<trainer>`` (two ranks); the probe callback records each rank's rows and final
    weights under ``<run_dir>/probe``. With ``check`` a non-zero exit fails the test with the run's output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), f"trainer={trainer}", *COMMON, f"hydra.run.dir={run_dir}",
           "+callbacks.probe._target_=tests.framework.ddp_probe.RankProbe", f"+callbacks.probe.path={run_dir}/probe",
           *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def probe(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]


def losses(run_dir: Path) -> dict[int, float]:
    rows = list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
