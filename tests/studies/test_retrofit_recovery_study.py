"""Seconds-long run of ``python -m experiments.retrofit_recovery.run --smoke``: pretraining on a few stdlib files,
the plain Qwen3 export, the held-out LongBench-format task files, every arm trained or built and evaluated through
the evaluation API; a second invocation reuses the finished arms."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MODULE = "experiments.retrofit_recovery.run"  # run from the repository root, as its README says


def test_retrofit_recovery_smoke(tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    cmd = [sys.executable, "-m", MODULE, "--smoke", "--out", str(out), "--logs", str(logs)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    table, runs = results["summary"]["table"], results["runs"]
    assert set(table) == {"global", "window", "window_all", "window_tuned", "rosa_published", "rosa_recommended",
                          "rosa_teacher", "stage_b", "token"}
    for arm, row in table.items():
        assert 0.0 <= row["lcc"] <= 100.0 and 0.0 <= row["repobench-p"] <= 100.0 and 0.0 <= row["niah_1024"] <= 100.0
        assert math.isfinite(row["ppl_beyond_window"]) and row["ppl_beyond_window"] > 1.0
        assert math.isfinite(row["ppl_repeat"]) and row["ppl_repeat"] > 1.0
        assert math.isfinite(row["ppl_digest_first"]) and math.isfinite(row["ppl_repeat_first"])
    assert runs["global"]["window"] is None and runs["window"]["window"] == 16
    assert runs["stage_b"]["after"] in ("rosa_published", "rosa_recommended", "rosa_teacher")
    teacher_log = next((logs / "rosa_teacher").rglob("metrics.csv")).read_text()
    assert "train/teacher_loss" in teacher_log.splitlines()[0]  # the teacher arm trains with the hash teacher
    assert set(results["summary"]["recovered"]) == set(table) - {"global", "window"}
    # the exported backbone is a plain Qwen3 directory with its tokenizer
    config = json.loads((logs / "backbone" / "config.json").read_text())
    assert config["model_type"] == "qwen3" and "rosa" not in config
    assert (logs / "backbone" / "tokenizer.json").is_file()
    for name in ("lcc.jsonl", "repobench-p.jsonl"):
        record = json.loads((logs / "tasks" / name).read_text().splitlines()[0])
        assert record["answers"] and record["context"]
    assert "window + ROSA (recommended)" in (out / "results.md").read_text()
    for png in ("perplexity_vs_position.png", "score_vs_length.png"):
        assert (out / png).stat().st_size > 1000
    # a second invocation reuses the finished arms: same figures, nothing trained or evaluated again; an arm
    # cached before the first-copy losses existed gets them added from its finished run
    cached = logs / "rosa_published" / "result.json"
    old = json.loads(cached.read_text())
    cached.write_text(json.dumps({k: v for k, v in old.items() if k != "digest_first_loss"}))
    again = subprocess.run([*cmd, "--arms", "global,window,rosa_published"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    table_again = json.loads((out / "results.json").read_text())["summary"]["table"]
    assert table_again == {a: table[a] for a in ("global", "window", "rosa_published")}
    assert "Trainer.fit" not in again.stderr + again.stdout
    assert json.loads(cached.read_text())["digest_first_loss"] == old["digest_first_loss"]
    # a cached stage B that followed another stage A than this run's best is refused, not reused
    stage_b = logs / "stage_b" / "result.json"
    record = json.loads(stage_b.read_text())
    other = next(a for a in ("rosa_published", "rosa_recommended", "rosa_teacher") if a != record["after"])
    stage_b.write_text(json.dumps({**record, "after": other}))
    stale = subprocess.run([*cmd, "--arms", "global,window,rosa_published,rosa_recommended,rosa_teacher,stage_b"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert stale.returncode != 0 and "remove that folder" in stale.stderr
    stage_b.write_text(json.dumps(record))
    # the rescoring command on the finished arms: every record the held-out files give, intervals, shares
    rescored = tmp_path / "rescore"
    rescore = [sys.executable, "-m", "experiments.retrofit_recovery.rescore", str(logs / "global"),
               str(logs / "window"), f"best={logs / 'stage_b'}", "--out", str(rescored), "--niah-samples", "2",
               "--num-boot", "50"]
    proc = subprocess.run(rescore, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sample/s" in proc.stderr  # the evaluation's progress bars
    summary = json.loads((rescored / "results.json").read_text())["summary"]
    assert set(summary) == {"lcc", "repobench-p", "niah_single_1_1024"}
    counts = json.loads((rescored / "tasks" / "counts.json").read_text())
    assert counts["lcc"] >= 1 and summary["lcc"]["samples"] == counts["lcc"]
    assert summary["niah_single_1_1024"]["samples"] == 2
    for task in summary.values():
        assert set(task["arms"]) == {"global", "window", "best"}
        for arm in task["arms"].values():
            lo, hi = arm["ci"]
            assert 0.0 <= lo <= arm["mean"] <= hi <= 100.0
    assert (rescored / "scores_ci.png").stat().st_size > 1000 and "| best |" in (rescored / "results.md").read_text()
    again = subprocess.run(rescore, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "sample/s" not in again.stderr  # finished evaluations are reused
    assert json.loads((rescored / "results.json").read_text())["summary"] == summary


@pytest.mark.parametrize("kind", ["repeat", "digest"])
def test_repeat_rows_score_only_the_second_copy(tmp_path, kind):
    """``RepeatRows``: the scored tokens are one run inside the task, end just before the row's final EOT (a
    ``repeat`` task) or before its last line (``digest``), and occur earlier in the row (the first copy of the
    block), farther back than the window."""
    import hydra

    from experiments.retrofit_recovery import run as study

    logs = tmp_path / "logs"
    s = study.settings(True, logs)
    cfg = study.runs.compose("pretrain_code", [*study.common_overrides(s), *s["backbone"]], logs / "scratch")
    source = hydra.utils.instantiate(cfg.data.source)
    rows = study.RepeatRows(source, 4, s["seq_len"], kind=kind)
    eot = source.corpus.eot_id
    for i in range(len(rows)):
        item = rows[i]
        ids, labels = item["input_ids"].tolist(), item["labels"]
        scored = (labels != -100).nonzero().flatten().tolist()
        assert scored and scored == list(range(scored[0], scored[-1] + 1)) and ids[-1] == eot
        assert (scored[-1] == len(ids) - 2) if kind == "repeat" else (len(ids) - 6 <= scored[-1] < len(ids) - 2)
        assert all(int(labels[j]) == ids[j] for j in scored)
        # the block's text occurs earlier in the row (its tokens may split differently at its edges), more than a
        # window back
        block = source.tokenizer.decode([ids[j] for j in scored]).strip()
        before = source.tokenizer.decode(ids[: scored[0]])
        assert block and block in before, "the scored block does not occur earlier in the row"
        start = before.rindex(block)
        assert len(source.tokenizer(before[start:], add_special_tokens=False)["input_ids"]) > s["window"]


@pytest.mark.parametrize("kind", ["repeat", "digest"])
def test_repeat_rows_first_copy_labels_precede_the_second(tmp_path, kind):
    """``first_copy`` on ``RepeatRows``: the second copy's ``copy_core``, found earlier in the row (in most rows:
    BPE may split the first copy differently), as one run before the second copy."""
    import hydra

    from experiments.retrofit_recovery import run as study

    s = study.settings(True, tmp_path / "logs")
    cfg = study.runs.compose("pretrain_code", [*study.common_overrides(s), *s["backbone"]], tmp_path / "scratch")
    rows = study.RepeatRows(hydra.utils.instantiate(cfg.data.source), 4, s["seq_len"], kind=kind)
    found = 0
    for ids, second in rows.rows:
        first = study.first_copy(ids, second)
        a = (first != -100).nonzero().flatten().tolist()
        b = (second != -100).nonzero().flatten().tolist()
        found += bool(a)
        if a:
            assert a == list(range(a[0], a[-1] + 1)) and a[-1] < b[0] and len(a) == len(b) - 2
            assert ids[a].tolist() == ids[b[1:-1]].tolist() == first[a].tolist()
            assert (study.copy_core(second) != -100).nonzero().flatten().tolist() == b[1:-1]
    assert found >= 3
    # FirstCopyRows: the same rows scored on their first copy, those without one left out
    firsts = study.FirstCopyRows(rows)
    assert len(firsts) == found
    for item in firsts:
        assert torch.equal(item["labels"], study.first_copy(item["input_ids"], next(
            lab for ids, lab in rows.rows if ids is item["input_ids"])))


def test_repeat_probe_reads_a_train_py_run_folder(tmp_path):
    """``load_run_module`` rebuilds a run from its ``.hydra`` record, whose ``paths`` hold ``${hydra:...}`` keys
    that only resolve inside a Hydra app, and ``repeat_probe`` scores both copies with it."""
    import hydra
    import torch
    from omegaconf import OmegaConf

    from experiments.retrofit_recovery import repeat_probe
    from experiments.retrofit_recovery import run as study
    from experiments.retrofit_recovery.export_backbone import load_run_module

    run_dir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="not a finished train.py run folder"):
        load_run_module(run_dir)
    s = study.settings(True, tmp_path / "logs")
    cfg = study.runs.compose("pretrain_code", [*study.common_overrides(s), *s["backbone"]], run_dir)
    module = hydra.utils.instantiate(cfg.model)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict()}, run_dir / "checkpoints" / "last.ckpt")
    saved = OmegaConf.to_container(cfg, resolve=False)
    saved["paths"].update(root_dir="${hydra:runtime.cwd}", output_dir="${hydra:runtime.output_dir}",
                          work_dir="${hydra:runtime.cwd}")   # as train.py writes it
    OmegaConf.save(OmegaConf.create(saved), run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"cwd": str(ROOT), "output_dir": str(run_dir)}}}),
                   run_dir / ".hydra" / "hydra.yaml")
    loaded, _ = load_run_module(run_dir)
    name, value = next(iter(module.state_dict().items()))
    assert bool((loaded.state_dict()[name] == value).all())
    first, second = repeat_probe.main([str(run_dir), "--rows", "2"])
    assert math.isfinite(first) and math.isfinite(second) and first > 0 and second > 0
    assert math.isfinite(repeat_probe.main([str(run_dir), "--rows", "2", "--kind", "digest"])[1])
    # converted to a window: the layers after the global ones attend to 4 tokens, so the scores change
    windowed, _ = load_run_module(run_dir, {"model.rosa.window": 4})
    assert set(windowed.state_dict()) == set(loaded.state_dict())
    assert repeat_probe.main([str(run_dir), "--rows", "2", "--window", "4"]) != (first, second)
    with pytest.raises(KeyError, match="no key"):
        load_run_module(run_dir, {"model.rosa.no_such_key": 1})


def test_first_copy_finds_the_earliest_run_of_the_scored_core():
    import torch

    from experiments.retrofit_recovery.run import first_copy

    row = torch.tensor([9, 1, 2, 3, 4, 8, 1, 2, 3, 4, 7, 5, 2, 3, 4, 6])
    labels = torch.full_like(row, -100)
    labels[11:16] = row[11:16]               # scored 5 2 3 4 6: core 2 3 4, first seen at 2..4
    assert first_copy(row, labels).tolist() == [-100, -100, 2, 3, 4] + [-100] * 11
    labels[:] = -100
    labels[14:16] = row[14:16]               # two scored tokens: no core
    assert (first_copy(row, labels) == -100).all()
    labels[:] = -100
    labels[1:6] = row[1:6]                   # nothing before the scored run
    assert (first_copy(row, labels) == -100).all()


def test_a_logs_folder_of_other_settings_is_refused(tmp_path):
    """``check_logs`` records the settings beside the runs and refuses a folder written with others (or by a
    study that kept no record), since its backbone and finished arms would be reused."""
    from experiments.retrofit_recovery import run as study

    logs = tmp_path / "logs"
    s = study.settings(True, logs)
    study.check_logs(s, logs)
    study.check_logs(s, logs)  # the same settings: accepted again
    other = {**s, "ladder": [{**s["ladder"][0], "steps": 5}, *s["ladder"][1:]]}
    with pytest.raises(SystemExit, match="ladder differ"):
        study.check_logs(other, logs)
    old = tmp_path / "old"
    (old / "backbone").mkdir(parents=True)
    with pytest.raises(SystemExit, match="without a study.json"):
        study.check_logs(s, old)
    # the ladder chains its rungs: each after the first starts from the one before
    ov = study.rung_overrides(s, 1, logs)
    assert f"model.init_from={study.rung_dir(s, 0, logs) / 'checkpoints' / 'last.ckpt'}" in ov
    assert not any(o.startswith("model.init_from") for o in study.rung_overrides(s, 0, logs))


def test_shares_are_left_blank_where_the_references_do_not_differ():
    """A share of the global-minus-window gap is reported only where the gap is material (a point of score, 10 %
    of perplexity); trained arms are also measured against the window model tuned without ROSA."""
    from experiments.retrofit_recovery import run as study

    def result(lcc, digest_loss, beyond_loss):
        return {"scores": {"lcc": lcc}, "loss_by_position": [1.0] * 4 + [beyond_loss] * 4,
                "repeat_loss": [beyond_loss], "digest_loss": [digest_loss]}

    results = {"global": result(30.0, 1.0, 2.0), "window": result(32.0, 3.0, 2.01),
               "window_tuned": result(10.0, 2.0, 2.02), "rosa_recommended": result(20.0, 1.5, 2.0),
               "window_all": result(30.5, 0.5, 2.0)}
    summary = study.summarize(results, {"window": 4})
    rec, tun = summary["recovered"]["rosa_recommended"], summary["over_tuning"]["rosa_recommended"]
    assert math.isnan(rec["lcc"])  # the window is the better on lcc: nothing lost there to bring back
    assert math.isnan(rec["ppl_beyond_window"]) and math.isnan(rec["ppl_repeat"])  # 1 % of perplexity
    assert rec["ppl_digest"] == pytest.approx(0.75)  # log ppl 3 -> 1.5 of 3 -> 1
    assert tun["lcc"] == pytest.approx(0.5) and tun["ppl_digest"] == pytest.approx(0.5)
    assert summary["recovered"]["window_all"]["ppl_digest"] == pytest.approx(1.25)  # beyond global: above 1
    assert set(summary["over_tuning"]) == {"rosa_recommended"}  # the untrained arms and window_tuned itself: none


def test_pretraining_is_linked_from_a_study_of_the_same_settings(tmp_path):
    """``--pretrained-from`` links another folder's pretraining, backbone and tasks into a new logs folder when only
    the arms' step counts differ, and refuses a folder of other pretraining settings or without the runs."""
    from experiments.retrofit_recovery import run as study

    source, logs = tmp_path / "source", tmp_path / "logs"
    s = study.settings(True, source)
    study.check_logs(s, source)
    for name in study.PRETRAINED:
        (source / name).mkdir()
        (source / name / "marker.txt").write_text(name)
    longer = {**s, "stage_a_steps": 7}
    study.check_logs(longer, logs)
    study.link_pretraining(source, longer, logs)
    for name in study.PRETRAINED:
        assert (logs / name / "marker.txt").read_text() == name
    other = {**s, "window": s["window"] * 2}
    with pytest.raises(SystemExit, match="window differ"):
        study.link_pretraining(source, other, tmp_path / "other")
    with pytest.raises(SystemExit, match="expected a study logs folder"):
        study.link_pretraining(tmp_path / "missing", s, tmp_path / "other")
    with pytest.raises(SystemExit, match="--stage-a-steps must be at least 1"):
        study.main(["--smoke", "--stage-a-steps", "0", "--logs", str(tmp_path / "zero")])
    with pytest.raises(SystemExit, match="--stage-b-steps must be at least 1"):
        study.main(["--smoke", "--stage-b-steps", "0", "--logs", str(tmp_path / "zero")])
    # a longer stage B changes the stage-B and control arms' steps only, so the pretraining can be linked
    longer_b = {**s, "stage_b_steps": 9}
    study.link_pretraining(source, longer_b, tmp_path / "longer_b")
    cfg = study.arm_config("window_tuned", longer_b, tmp_path / "longer_b", tmp_path / "backbone", None)
    assert cfg.trainer.max_steps == 9


def test_stage_a_overrides_reach_the_stage_a_arms_only(tmp_path):
    """``--stage-a-override KEY=VALUE`` is recorded in the settings (absent when not given, so older folders stay
    comparable), changes the stage-A arms' configs only, leaves the pretraining linkable, and a malformed value is
    refused before anything runs."""
    from experiments.retrofit_recovery import run as study

    source = tmp_path / "source"
    s = study.settings(True, source)
    assert "stage_a_overrides" not in s
    study.check_logs(s, source)
    for name in study.PRETRAINED:
        (source / name).mkdir()
    tuned = {**s, "stage_a_overrides": ["model.lr.A.rosa=0.01"]}
    study.link_pretraining(source, tuned, tmp_path / "tuned")  # an arm-only setting
    for arm in ("rosa_published", "rosa_recommended", "rosa_teacher", "token"):
        cfg = study.arm_config(arm, tuned, tmp_path / "tuned", tmp_path / "backbone", None)
        assert cfg.model.lr.A.rosa == 0.01, arm
    plain = study.arm_config("rosa_recommended", s, tmp_path / "plain", tmp_path / "backbone", None)
    assert plain.model.lr.A.rosa == 3.0e-3
    tuned_window = study.arm_config("window_tuned", tuned, tmp_path / "tuned", tmp_path / "backbone", None)
    assert tuned_window.model.lr.A.rosa == 3.0e-3
    moved = {**s, "stage_a_overrides": ["model.rosa.injection=post_mlp"]}
    stage_b = study.arm_config("stage_b", moved, tmp_path / "moved", tmp_path / "backbone", "rosa_recommended")
    assert stage_b.model.rosa.injection == "post_mlp"  # stage B continues the branch with its options
    teacher = study.arm_config("rosa_teacher", s, tmp_path / "plain", tmp_path / "backbone", None)
    assert teacher.model.hash_teacher.warm_start_steps == 100 and teacher.model.rosa.bits == 8
    for bad in ("model.lr.A.rosa", "=1"):
        with pytest.raises(SystemExit, match="expects KEY=VALUE"):
            study.main(["--smoke", "--stage-a-override", bad, "--logs", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


class _NextTokenModel(torch.nn.Module):
    """Logits one-hot at each position on the token ``shift`` positions later in the row itself (``shift=1``: an
    oracle of the next token; ``shift=0``: the current token, wrong wherever a token is not repeated); ``None``:
    uniform."""

    def __init__(self, vocab: int, shift):
        super().__init__()
        self.vocab, self.shift = vocab, shift

    def forward(self, input_ids):
        from types import SimpleNamespace

        logits = torch.zeros(*input_ids.shape, self.vocab)
        if self.shift is not None:
            target = torch.roll(input_ids, -self.shift, dims=1)
            logits.scatter_(2, target[..., None], 30.0)
        return SimpleNamespace(logits=logits)


def _niah_tokenizer():
    """A small byte-level BPE that writes RULER's NIAH samples."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["The grass is green. The sky is blue. The special magic number for key is 0123456789 " * 3]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def test_niah_probe_scores_only_the_value_tokens():
    """The oracle of the next token gets every value right at zero loss, a uniform model ln V and none right, and a
    model one position off (the current token, not the next) none right: the value's tokens are found after the
    prompt and scored from the position before each."""
    from experiments.retrofit_recovery.niah_probe import niah_answer_scores
    from rosa_lightning.evaluation.niah import generate_niah

    tokenizer = _niah_tokenizer()
    records = generate_niah(tokenizer, 1500, num_samples=4)
    vocab = len(tokenizer)
    oracle = niah_answer_scores(_NextTokenModel(vocab, 1), tokenizer, records)
    assert oracle["exact"] == 1.0 and oracle["first"] < 1e-6 and oracle["samples"] == 4
    uniform = niah_answer_scores(_NextTokenModel(vocab, None), tokenizer, records)
    assert uniform["exact"] == 0.0 and abs(uniform["first"] - math.log(vocab)) < 1e-5
    assert niah_answer_scores(_NextTokenModel(vocab, 0), tokenizer, records)["exact"] == 0.0


def test_a_subset_of_arms_does_not_overwrite_the_readme_table(tmp_path):
    """The README's results block is written by a run of every arm only: a subset (the README's own
    ``--arms global,window,rosa_recommended``) reports under its logs folder unless --out says otherwise."""
    from experiments.retrofit_recovery import run as study

    logs = tmp_path / "logs"
    assert study.report_dir(None, list(study.ARMS), logs) == study.HERE
    assert study.report_dir(None, ["global", "window", "rosa_recommended"], logs) == logs / "report"
    assert study.report_dir(tmp_path / "mine", ["global"], logs) == tmp_path / "mine"


def test_the_full_ladder_starts_with_a_copy_warm_up_and_keeps_copying(tmp_path):
    """The full study's first rung trains on ``copy_ids`` rows only; every later rung keeps them in its mix (the
    needle rungs beside the needles), so the copying that forms in the warm-up is not lost."""
    from experiments.harness import runs
    from experiments.retrofit_recovery import run as study

    logs = tmp_path / "logs"
    s = study.settings(False, logs)
    kinds = []
    for i in range(len(s["ladder"])):
        cfg = runs.compose("pretrain_code_copy", study.rung_overrides(s, i, logs), study.rung_dir(s, i, logs))
        kinds.append(dict(cfg.data.source.kinds))
        assert cfg.data.seq_len == s["ladder"][i]["seq_len"] and cfg.trainer.max_steps == s["ladder"][i]["steps"]
    assert {k: v for k, v in kinds[0].items() if v} == {"copy_ids": 1.0}
    assert all(k["copy_ids"] == 1.0 and k["repeat"] > 0 and k["digest"] > 0 for k in kinds[1:])
    assert [k["niah"] for k in kinds] == [0.0] * (len(kinds) - 3) + [2.0, 4.0, 4.0]


def test_needle_retrieval_shares_read_the_branches_destinations():
    """``TauRecorder`` passes every ROSA layer's job through unchanged (the same logits) and keeps its tau, which
    points into the past; ``needle_sentence_tokens`` finds the needle's sentence; the shares are fractions of
    (layer, route) destinations, beside the sentence's share of the prompt; a model without branches is refused."""
    from transformers import Qwen3Config

    from experiments.retrofit_recovery.niah_probe import (TauRecorder, needle_retrieval_shares,
                                                          needle_sentence_tokens)
    from rosa_lightning.evaluation.niah import generate_niah
    from rosa_lightning.modeling import RosaConfig, build_rosa_model
    from rosa_lightning.modeling.model import attach_pipeline
    from rosa_lightning.retrieval.pipeline import RetrievalPipeline

    tokenizer = _niah_tokenizer()
    records = generate_niah(tokenizer, 900, num_samples=3)
    config = Qwen3Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=128, vocab_size=len(tokenizer), max_position_embeddings=1024)
    torch.manual_seed(0)
    model = build_rosa_model(config, RosaConfig(window=8, global_layers=1, runtime=dict(num_threads=1))).eval()
    r = records[0]
    enc = tokenizer(r["input"] + " " + r["answers"][0], return_offsets_mapping=True)
    lo, hi = needle_sentence_tokens(r, enc["offset_mapping"])
    sentence = tokenizer.decode(enc["input_ids"][lo: hi + 1])
    assert sentence.startswith("One of the special magic numbers for ") and sentence.endswith(f"{r['answers'][0]}.")
    ids = torch.tensor(enc["input_ids"])[None]
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        pipeline = RetrievalPipeline(1).start()
        recorder = TauRecorder(pipeline)
        attach_pipeline(model, recorder)
        try:
            recorded = model(input_ids=ids).logits
        finally:
            attach_pipeline(model, None)
            pipeline.close()
    assert torch.equal(plain, recorded)
    assert sorted(recorder.taus) == [1, 2]  # layer 0 is global, without a branch
    for tau in recorder.taus.values():
        assert tau.shape == (1, 64 // 4, ids.shape[1])  # [B, R, T] with R = C / bits
        assert bool((tau <= torch.arange(ids.shape[1])).all()) and int(tau.min()) >= -1  # never the future
    shares = needle_retrieval_shares(model, tokenizer, records)
    assert all(0.0 <= shares[k] <= 1.0 for k in ("first", "later", "none")) and shares["samples"] == 3
    assert 0.0 < shares["chance"] < 0.5
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain)  # the model's own pipeline is back
    off = build_rosa_model(config, RosaConfig(window=8, global_layers=1, runtime=dict(num_threads=1, enabled=False)))
    with pytest.raises(ValueError, match="no ROSA branches"):
        needle_retrieval_shares(off, tokenizer, records)
