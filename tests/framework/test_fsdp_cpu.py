"""Fully sharded data parallelism on the CPU (trainer=fsdp_cpu: FSDP2 through Lightning's ModelParallelStrategy,
2 gloo ranks) through train.py: the same losses and weights as DDP, one set of checkpoints and exports holding the
whole model, an exact resume (under FSDP and, from the same checkpoint, under DDP), stage A with the chunked loss,
gradient clipping and activation checkpointing, and the in-run stage switch refused before the first step."""
import pytest
import torch
from safetensors.torch import load_file

from tests.framework.multiproc import STOP_AT_5, losses, probe, run_train

pytestmark = pytest.mark.timeout(600)
STEPS = ["trainer.max_steps=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 8-step run under each strategy (default experiment: everything trains, full logits)."""
    root = tmp_path_factory.mktemp("fsdp")
    run_train("fsdp_cpu", root / "fsdp", *STEPS)
    run_train("ddp_cpu", root / "ddp", *STEPS)
    return root


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_close_states(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=atol), k


def test_fsdp_trains_as_ddp_and_writes_one_whole_run(runs):
    fsdp, ddp = runs / "fsdp", runs / "ddp"
    a, b = losses(fsdp), losses(ddp)
    assert sorted(a) == list(range(8))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), step
    ranks = probe(fsdp)
    seen = [{h for hashes in r["rows"].values() for h in hashes} for r in ranks]
    assert all(len(s) == 8 * 4 for s in seen) and not seen[0] & seen[1]  # sharded rows, no row twice
    assert ranks[0]["params"] == ranks[1]["params"]  # the gathered weights agree on both ranks
    assert sorted(p.name for p in (fsdp / "checkpoints").iterdir()) == sorted(
        p.name for p in (ddp / "checkpoints").iterdir())
    ckpt = _state(fsdp / "checkpoints" / "last.ckpt")
    _assert_close_states(ckpt["state_dict"], _state(ddp / "checkpoints" / "last.ckpt")["state_dict"])
    assert all(not type(t).__name__.startswith("DTensor") for t in ckpt["state_dict"].values())
    adapter = load_file(fsdp / "adapter" / "rosa_adapter.safetensors")
    _assert_close_states(adapter, load_file(ddp / "adapter" / "rosa_adapter.safetensors"))
    merged = {}
    for f in (fsdp / "model").glob("*.safetensors"):
        merged.update(load_file(f))
    whole = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert merged and set(merged) <= set(whole)
    for k, v in merged.items():
        assert torch.equal(v, whole[k]), k


def test_fsdp_resume_is_exact_and_its_checkpoint_resumes_under_ddp(runs, tmp_path):
    first = tmp_path / "first"
    run_train("fsdp_cpu", first, *STEPS, *STOP_AT_5)
    ckpt = first / "checkpoints" / "step0000004.ckpt"
    assert ckpt.is_file() and not (first / "checkpoints" / "step0000008.ckpt").exists()
    full = losses(runs / "fsdp")
    for trainer in ("fsdp_cpu", "ddp_cpu"):
        resumed = tmp_path / trainer
        run_train(trainer, resumed, *STEPS, f"ckpt_path={ckpt}")
        b = losses(resumed)
        assert sorted(b) == [4, 5, 6, 7], trainer
        for step in b:
            assert b[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), (trainer, step)


def test_fsdp_stage_a_with_chunked_loss_clipping_and_checkpointing_matches_ddp(tmp_path):
    opts = ["trainer.max_steps=4", "train.stage=A", "model.loss_chunk_tokens=32", "trainer.gradient_clip_val=1.0",
            "model.gradient_checkpointing=true"]
    run_train("fsdp_cpu", tmp_path / "fsdp", *opts)
    run_train("ddp_cpu", tmp_path / "ddp", *opts)
    a, b = losses(tmp_path / "fsdp"), losses(tmp_path / "ddp")
    assert sorted(a) == [0, 1, 2, 3]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), step
    _assert_close_states(_state(tmp_path / "fsdp" / "checkpoints" / "last.ckpt")["state_dict"],
                         _state(tmp_path / "ddp" / "checkpoints" / "last.ckpt")["state_dict"])
    assert probe(tmp_path / "fsdp")[0]["stage"] == "A"


def test_fsdp_refuses_the_in_run_stage_switch_before_training(tmp_path):
    run = tmp_path / "run"
    proc = run_train("fsdp_cpu", run, "trainer.max_steps=4", "train.stage=A", "train.stage_a_tokens=1024",
                     check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "train.stage_a_tokens" in out and "ModelParallelStrategy" in out and "model.init_from" in out
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
