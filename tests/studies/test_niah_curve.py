"""``experiments.retrofit_recovery.niah_curve``: the curve of a keep_best_niah run, its best step as the callback
picks it (the first step at the maximum), a resumed run's repeated step, the plot, and runs without a curve."""
import json

import pytest

from experiments.retrofit_recovery import niah_curve


def write_curve(run, rows):
    (run / "best").mkdir(parents=True)
    (run / "best" / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_curve_best_step_and_plot(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_curve(a, [{"step": 400, "niah_single_1_512": 2.0}, {"step": 800, "niah_single_1_512": 8.0},
                    {"step": 1200, "niah_single_1_512": 8.0}, {"step": 800, "niah_single_1_512": 6.0}])
    write_curve(b, [{"step": 400, "niah_single_1_512": 4.0, "niah_single_1_1024": 1.0}])
    out = tmp_path / "curve.png"
    assert niah_curve.main([f"one={a}", str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # the resumed run's later line for step 800 replaces the earlier one: the maximum 8 is first reached at 1200
    assert "one niah_single_1_512: 400:2 800:6 1200:8  best 8 at step 1200" in text
    assert f"{b} niah_single_1_1024: 400:1  best 1 at step 400" in text
    assert out.stat().st_size > 1000


def test_a_run_without_curve_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="callbacks=keep_best_niah"):
        niah_curve.main([str(tmp_path)])


def test_test_curve_of_the_callbacks_own_samples_equals_its_curve(tmp_path, capsys):
    """Scored on the callback's own samples (seed 7, RULER's 128 new tokens), every periodic checkpoint gives the
    score the callback logged at that step; a second call is served from the cache."""
    from tests.evaluation.helpers import save_backbone
    from tests.framework.conftest import compose_cfg

    from rosa_lightning.cli import train

    backbone = save_backbone(tmp_path / "backbone")
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": "The grass is green. " * 40}) + "\n" for _ in range(20)))
    run = tmp_path / "run"
    train(compose_cfg(run, ["experiment=longbench", "callbacks=keep_best_niah", f"model.backbone={backbone}",
                            f"data.source.path={corpus}", "data.seq_len=64", "model.rosa.window=32",
                            "data.num_workers=0", "logger=csv", "trainer.limit_val_batches=0",
                            "trainer.enable_progress_bar=false", "trainer.precision=32-true", "model.torch_dtype=null",
                            "train.stage=B", "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2",
                            "callbacks.task_eval.niah_lengths=[1024]", "callbacks.task_eval.num_samples=3",
                            "callbacks.task_eval.every_n_train_steps=2", f"paths.output_dir={run}"]))
    args = [str(run), "--test-samples", "3", "--test-seed", "7"]
    assert niah_curve.main(args) == 0
    logged = {r["step"]: r["niah_single_1_1024"] for r in niah_curve.read_curve(run)}
    cached = json.loads((run / "best" / "test_curve.json").read_text())["niah_single_1_1024 samples=3 seed=7"]
    assert {int(k): v for k, v in cached.items()} == logged and sorted(logged) == [2, 4]
    capsys.readouterr()
    (run / "checkpoints" / "step0000002.ckpt").unlink()  # served from the cache: the checkpoint is not read again
    assert niah_curve.main(args) == 0 and "at the kept step" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no checkpoints/step<step>.ckpt for steps \\[2\\]"):
        niah_curve.main([str(run), "--test-samples", "2"])
