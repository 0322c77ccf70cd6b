"""Two processes on the CPU (trainer=ddp_cpu, gloo) through train.py, as a user runs it: ROSA layers and the token
channel on, distributed sampling, one set of checkpoints, exact resume, and the stage A -> B switch on both ranks."""
import pytest

from tests.framework.multiproc import STOP_AT_5, losses as _losses, probe as _probe, run_train

pytestmark = pytest.mark.timeout(600)


def _run(run_dir, *overrides):
    return run_train("ddp_cpu", run_dir, *overrides)


def test_two_ranks_share_the_rows_and_write_one_run(tmp_path):
    run = tmp_path / "run"
    proc = _run(run, "trainer.max_steps=3", "model.rosa.token_channel=shared", "data.num_workers=1")
    ranks = _probe(run)
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [{h for hashes in r["rows"].values() for h in hashes} for r in ranks]
    assert all(len(s) == 3 * 4 for s in seen) and not seen[0] & seen[1]  # 3 steps x 4 rows each, no row twice
    assert ranks[0]["params"] == ranks[1]["params"]  # gradients were all-reduced
    out = proc.stdout + proc.stderr
    for rank in (0, 1):  # each rank logs its share of the cores and the threads it gives the kernel
        assert f"rank {rank}/2:" in out and "retrieval kernel threads" in out
    assert out.count("Run finished") == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (run / "adapter" / "rosa_adapter.safetensors").is_file() and (run / "model" / "config.json").is_file()


def test_two_rank_resume_reproduces_the_uninterrupted_run(tmp_path):
    full, first, resumed = tmp_path / "full", tmp_path / "first", tmp_path / "resumed"
    _run(full, "trainer.max_steps=8")
    _run(first, "trainer.max_steps=8", *STOP_AT_5)
    ckpt = first / "checkpoints" / "step0000004.ckpt"
    assert ckpt.is_file() and not (first / "checkpoints" / "step0000008.ckpt").exists()
    _run(resumed, "trainer.max_steps=8", f"ckpt_path={ckpt}")
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [4, 5, 6, 7]
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    assert _probe(full)[0]["params"] == _probe(resumed)[0]["params"] == _probe(resumed)[1]["params"]


def test_stage_switch_on_two_ranks_and_exact_resume_after_it(tmp_path):
    """Stage A for 2 steps (2 ranks x 4 rows x 64 tokens = 512 tokens a step), then stage B on both ranks with the
    backbone's gradients all-reduced too; a run stopped after the switch and resumed gives the same losses."""
    switch = ["train.stage=A", "train.stage_a_tokens=1024", "trainer.max_steps=8"]
    full, first, resumed = tmp_path / "full", tmp_path / "first", tmp_path / "resumed"
    _run(full, *switch)
    ranks = _probe(full)
    assert [r["stage"] for r in ranks] == ["B", "B"] and ranks[0]["params"] == ranks[1]["params"]
    _run(first, *switch, *STOP_AT_5)
    ckpt = first / "checkpoints" / "step0000004.ckpt"
    _run(resumed, *switch, f"ckpt_path={ckpt}")
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [4, 5, 6, 7]
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    assert _probe(resumed)[0]["params"] == _probe(resumed)[1]["params"] == ranks[0]["params"]
