"""NIAH during training (callbacks=keep_best_niah): the logged curve, the best step's model kept whole and equal to
that step's checkpoint, its score reproduced by a separate evaluation, training unchanged by the evaluations, a
resumed run keeping its best, and refusals of settings that cannot work."""
import json
from pathlib import Path

import pytest
import torch

from rosa_lightning.evaluation.during_training import TaskEvaluation
from rosa_lightning.cli import train
from tests.evaluation.helpers import save_backbone

STEPS = 6


@pytest.fixture(scope="module")
def bpe_backbone(tmp_path_factory) -> Path:
    """A tiny Qwen3 with a BPE that tokenizes RULER's haystack (the framework's word tokenizer cannot)."""
    return save_backbone(tmp_path_factory.mktemp("bpe_qwen3"))


def overrides(backbone: Path, corpus: Path, *extra: str) -> list[str]:
    return ["experiment=longbench", "callbacks=keep_best_niah", f"model.backbone={backbone}",
            f"data.source.path={corpus}", "data.seq_len=64", "model.rosa.window=32", "data.num_workers=0",
            "logger=csv", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
            "trainer.precision=32-true", "model.torch_dtype=null", "train.stage=B", f"trainer.max_steps={STEPS}",
            "callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.task_eval.niah_lengths=[1024]",
            "callbacks.task_eval.num_samples=3", "callbacks.task_eval.every_n_train_steps=2",
            "callbacks.task_eval.max_new_tokens=6", "callbacks.task_eval.batch_size=2", *extra]


def scripted_scores(monkeypatch, values):
    """``TaskEvaluation._score`` returning ``values`` in turn (the tiny random model scores 0 on every step)."""
    it = iter(values)
    monkeypatch.setattr(TaskEvaluation, "_score", lambda self, trainer, model, samples: next(it))


def curve(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "best" / "curve.jsonl").read_text().splitlines()]


def state_of(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_keeps_the_model_of_the_best_step(make_cfg, tmp_path, bpe_backbone, text_corpus, monkeypatch, caplog):
    scripted_scores(monkeypatch, [(10.0, []), (40.0, [{"_id": "a", "pred": "x"}]), (20.0, [])])
    monitored = ["+callbacks.best_ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint",
                 f"+callbacks.best_ckpt.dirpath={tmp_path / 'monitored'}", "+callbacks.best_ckpt.filename='best-{step}'",
                 "+callbacks.best_ckpt.monitor=eval/niah_single_1_1024", "+callbacks.best_ckpt.mode=max",
                 "+callbacks.best_ckpt.save_top_k=1", "+callbacks.best_ckpt.every_n_train_steps=2"]
    with caplog.at_level("INFO", logger="rosa_lightning.cli"):
        train(make_cfg(*overrides(bpe_backbone, text_corpus), *monitored))
    assert [p.name for p in (tmp_path / "monitored").iterdir()] == ["best-step=4.ckpt"]  # monitor= sees the score
    rows = curve(tmp_path)
    assert [(r["step"], r["niah_single_1_1024"], r["best"]) for r in rows] == [(2, 10.0, True), (4, 40.0, True),
                                                                               (6, 20.0, False)]
    best = tmp_path / "best" / "niah_single_1_1024"
    record = json.loads((best / "best.json").read_text())
    assert (record["step"], record["score"], record["seed"], record["num_samples"]) == (4, 40.0, 7, 3)
    assert [json.loads(x) for x in (best / "predictions_1024.jsonl").read_text().splitlines()] == [
        {"_id": "a", "pred": "x"}]
    kept = state_of(best)
    ckpt = torch.load(tmp_path / "checkpoints" / "step0000004.ckpt", weights_only=False)["state_dict"]
    final = state_of(tmp_path / "model")
    assert kept.keys() == final.keys()
    assert all(torch.equal(kept[k], ckpt["model." + k]) for k in kept)       # the weights of step 4
    assert any(not torch.equal(kept[k], final[k]) for k in kept)            # not those of the last step
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(best)("The grass")["input_ids"] == \
        AutoTokenizer.from_pretrained(bpe_backbone)("The grass")["input_ids"]
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Run finished")]
    assert "best model   best/niah_single_1_1024/" in summary and "eval/niah_single_1_1024 20" in summary
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "eval/niah_single_1_1024" in metrics and "time/task_eval_s" in metrics


def test_score_equals_a_separate_evaluation_and_training_is_unchanged(make_cfg, tmp_path, bpe_backbone,
                                                                      text_corpus):
    from rosa_lightning.evaluation.niah import generate_niah, score_niah
    from rosa_lightning.evaluation.prompts import tokenize
    from rosa_lightning.evaluation.runner import Sample, generate_batch
    from rosa_lightning.generation.loading import load_run

    with_eval = tmp_path / "with"
    with_eval.mkdir()
    _, objects = train(make_cfg(*overrides(bpe_backbone, text_corpus, f"paths.output_dir={with_eval}")))
    cb = next(c for c in objects["trainer"].callbacks if isinstance(c, TaskEvaluation))
    assert [h["step"] for h in cb.history] == [2, 4, 6]                       # no second evaluation at the end
    model, tok = load_run(str(with_eval / "best" / "niah_single_1_1024"), device="cpu")
    records = generate_niah(tok, 1024, num_samples=3, seed=7)
    preds = {}
    for r in records:
        (c,), _ = generate_batch(model, tok, [Sample(r["_id"], tokenize(tok, r["input"]), 6)])
        preds[r["_id"]] = tok.decode(c, skip_special_tokens=True)
    assert score_niah(list(preds.values()), [r["answers"] for r in records]) == cb.best_score
    kept = [json.loads(x) for x in (with_eval / "best" / "niah_single_1_1024" / "predictions_1024.jsonl")
            .read_text().splitlines()]
    assert {r["_id"]: r["pred"] for r in kept} == preds                     # one by one, as generated in training
    assert all(r["pred"].strip() for r in kept)                             # something was generated

    plain = tmp_path / "plain"
    plain.mkdir()
    without = [o for o in overrides(bpe_backbone, text_corpus, f"paths.output_dir={plain}")
               if not o.startswith("callbacks")] + ["callbacks.model_checkpoint.every_n_train_steps=2"]
    train(make_cfg(*without))
    a, b = state_of(with_eval / "model"), state_of(plain / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_keeps_its_best(make_cfg, tmp_path, bpe_backbone, text_corpus, monkeypatch):
    scripted_scores(monkeypatch, [(30.0, []), (5.0, [])])
    train(make_cfg(*overrides(bpe_backbone, text_corpus, "trainer.max_steps=4")))
    scripted_scores(monkeypatch, [(20.0, [])])
    _, objects = train(make_cfg(*overrides(bpe_backbone, text_corpus,
                                           f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")))
    cb = next(c for c in objects["trainer"].callbacks if isinstance(c, TaskEvaluation))
    assert (cb.best_step, cb.best_score) == (2, 30.0)                         # step 6's 20 is not better
    assert json.loads((tmp_path / "best" / "niah_single_1_1024" / "best.json").read_text())["step"] == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"niah_lengths": []}, "niah_lengths must be a non-empty list"),
    ({"niah_lengths": [512], "monitor": 1024}, "monitor=1024 is not one of niah_lengths"),
    ({"niah_lengths": [512], "every_n_train_steps": 0}, "every_n_train_steps must be at least 1"),
    ({"niah_lengths": [512], "max_new_tokens": 0}, "max_new_tokens must be at least 1"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskEvaluation(**kwargs)


def test_a_run_without_tokenizer_is_refused_before_training(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="needs the run's tokenizer"):
        train(make_cfg("callbacks=keep_best_niah", "trainer.max_steps=2", "logger=csv",
                       "trainer.enable_progress_bar=false", "data.batch_size=4", "data.source.num_train=64"))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.timeout(600)
def test_two_ranks_score_every_sample_once(tmp_path, bpe_backbone, text_corpus):
    """trainer=ddp_cpu: each rank generates its share, rank 0 keeps the best model with every rank's predictions,
    and the score is RULER's over all samples (3 samples: 2 on rank 0, 1 on rank 1)."""
    import os
    import subprocess
    import sys

    from rosa_lightning.evaluation.niah import score_niah

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "run"
    cmd = [sys.executable, str(root / "train.py"), "trainer=ddp_cpu", f"hydra.run.dir={run}",
           *overrides(bpe_backbone, text_corpus, "trainer.max_steps=2", "data.batch_size=2")]
    proc = subprocess.run(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert [r["step"] for r in curve(run)] == [2]                              # written once, by rank 0
    best = run / "best" / "niah_single_1_1024"
    rows = [json.loads(x) for x in (best / "predictions_1024.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and len({r["_id"] for r in rows}) == 3
    score = json.loads((best / "best.json").read_text())["score"]
    assert score == score_niah([r["pred"] for r in rows], [r["answers"] for r in rows])
