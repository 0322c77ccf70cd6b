"""The CPU-safe parts of ``experiments/gpu_check``: its CPU rehearsal runs every section and writes its table, a
machine without CUDA gets a clear error (exit 2), the time-budget guard skips instead of overrunning, the script
imports nothing the bare GPU machine lacks, and the sharded trainer configs compose."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.framework.conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]
MODULE = "experiments.gpu_check.run"  # run from the repository root, as its README says
BLOCKED = ("hydra", "omegaconf", "wandb", "datasets")


def test_cpu_rehearsal_runs_every_section(tmp_path):
    cmd = [sys.executable, "-m", MODULE, "--device", "cpu", "--smoke", "--out-dir", str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads((tmp_path / "cpu_smoke.json").read_text())["rows"]
    assert (tmp_path / "cpu_smoke.md").read_text().count("\n| ") == len(rows) + 1  # the header too
    by = lambda section, check: [r for r in rows if r["section"] == section and r["check"] == check]  # noqa: E731
    pipeline = by("1 exactness", "pipeline vs rosa_match")
    assert len(pipeline) == 8 and all(r["result"] == "pass" for r in pipeline)  # 2 shapes x bits 4, 8 x defer
    model = by("1 exactness", "model device vs CPU")
    assert len(model) == 7 and all(r["result"] == "pass" for r in model)
    assert any("checkpointing=True" in r["setting"] for r in model)
    assert sum("inputs=induction" in r["setting"] for r in model) == 2
    assert [r["result"] for r in by("2 bf16", "forward + backward")] == ["pass"]
    for arm in ("global", "window", "window+rosa"):
        (row,) = by("3 step time", arm)
        assert row["result"] == "measured" and row["data"]["step_s"] > 0 and row["data"]["T"] == 256
    rosa = by("3 step time", "window+rosa")[0]["data"]
    assert rosa["rosa"]["calls"] > 0 and rosa["kernel_threads"] >= 1 and len(rosa["per_layer"]) == 1
    assert by("3 step time", "window+rosa layer 1")
    fsdp = [r for r in rows if r["section"] == "4 FSDP"]
    assert fsdp[0]["result"] == "pass"  # the gloo process group
    assert {r["result"] for r in fsdp[1:]} <= {"pass", "skipped"} and len(fsdp) == 5
    assert [r["result"] for r in fsdp if r["check"] == "FSDP2 vs unwrapped"] == ["pass", "pass"]  # runs on the CPU
    assert not [r for r in rows if r["result"] in ("FAIL", "error")]
    assert "| 3 step time | window+rosa |" in run.stdout


def test_without_cuda_exits_2_with_a_message(monkeypatch, capsys, tmp_path):
    from experiments.gpu_check import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu --smoke" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_without_cuda_command_line_exit_code(tmp_path):
    code = ("import sys, torch; torch.cuda.is_available = lambda: False; "
            "from experiments.gpu_check.run import main; sys.exit(main())")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "CUDA" in run.stderr and "Traceback" not in run.stderr


def test_budget_guard_skips_instead_of_running(tmp_path):
    from experiments.gpu_check import run

    threads = torch.get_num_threads()
    try:
        code = run.main(["--device", "cpu", "--smoke", "--budget-s", "0", "--out-dir", str(tmp_path),
                         "--torch-threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    rows = json.loads((tmp_path / "cpu_smoke.json").read_text())["rows"]
    assert rows[0]["section"] == "0 setup"
    assert {r["result"] for r in rows[1:]} == {"skipped"}
    assert {r["section"] for r in rows[1:]} == {"1 exactness", "2 bf16", "3 step time", "4 FSDP"}


def test_imports_without_hydra_omegaconf_wandb_datasets():
    code = f"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError("blocked: " + name)
sys.meta_path.insert(0, Block())
import experiments.gpu_check.run, experiments.gpu_check.exactness, experiments.gpu_check.step_time
import experiments.gpu_check.fsdp_check
import rosa_lightning.modeling, rosa_lightning.retrieval, experiments.harness.report
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("imported")
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "imported" in run.stdout, run.stderr[-3000:]


@pytest.mark.parametrize("trainer", ["fsdp", "fsdp2", "deepspeed"])
def test_sharded_trainer_configs_compose(tmp_path, trainer):
    cfg = compose_cfg(tmp_path, [f"trainer={trainer}"])
    t = cfg.trainer
    assert t._target_ == "lightning.pytorch.trainer.Trainer" and t.accelerator == "gpu"
    assert t.precision == "bf16-true"
    if trainer == "deepspeed":
        assert t.strategy == "deepspeed_stage_2"
        return
    if trainer == "fsdp2":  # the code path of trainer=fsdp_cpu (tests/framework/test_fsdp_cpu.py)
        assert t.strategy._target_ == "lightning.pytorch.strategies.ModelParallelStrategy"
        assert t.strategy.save_distributed_checkpoint is False
        assert compose_cfg(tmp_path, ["trainer=fsdp_cpu"]).trainer.strategy == t.strategy
        return
    s = t.strategy
    assert s._target_ == "lightning.pytorch.strategies.FSDPStrategy"
    assert s.use_orig_params is True and s.state_dict_type == "full"
    from hydra.utils import instantiate

    from rosa_lightning.modeling import RosaQwen3DecoderLayer
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    # the wrap policy alone (the strategy itself needs accelerators): the set of decoder-layer classes
    assert instantiate(s.auto_wrap_policy) == {Qwen3DecoderLayer, RosaQwen3DecoderLayer}


def test_step_time_falls_back_to_a_shorter_length(monkeypatch):
    from experiments.gpu_check import common, run, step_time

    real = step_time._measure

    def measure(device, shape, arm, T, *args):
        if T == 256:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(device, shape, arm, T, *args)

    monkeypatch.setattr(step_time, "_measure", measure)
    rows: list = []
    step_time.step_time(rows, torch.device("cpu"), run.STEP_SMOKE, [256, 64], 32, ["sdpa"], 0, 1, 1,
                        common.Budget(300), reserve_s=0)
    arms = [r for r in rows if r.check in step_time.ARMS]
    assert [r.check for r in arms] == ["global", "window", "window+rosa"]
    for r in arms:
        assert r.result == "measured" and r.data["T"] == 64 and "T=256 out of memory" in r.note
