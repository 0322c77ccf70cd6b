"""The issue's end-to-end check: the published recipe, as written, on a tiny local backbone with the
stdlib stand-in corpus at the recipe's default data path (16,384-token rows, bf16, stage A)."""
import json
import math

import pytest

from rosa_lightning.cli import train
from rosa_lightning.data.export_corpus import export_stdlib_jsonl, main


def test_export_writes_one_document_per_file(tmp_path, capsys):
    files = ["json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "json/tool.py"]
    path = export_stdlib_jsonl(tmp_path / "out", files=files)
    docs = [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
    assert 1 <= len(docs) <= len(files) and all(len(d) > 100 for d in docs)
    assert not list((tmp_path / "out").glob(".stdlib.*"))  # no temporary file left behind
    main([str(tmp_path / "cli")])
    assert "documents to" in capsys.readouterr().out


@pytest.mark.slow
def test_longbench_recipe_as_written_runs_on_cpu(make_cfg, tiny_backbone_dir, tmp_path):
    export_stdlib_jsonl(tmp_path / "data" / "longbench_train")
    cfg = make_cfg("experiment=longbench", "trainer.fast_dev_run=true", f"model.backbone={tiny_backbone_dir}",
                   f"paths.data_dir={tmp_path / 'data'}", "logger=csv")
    assert cfg.data.seq_len == 16384 and cfg.trainer.precision == "bf16-true"
    metrics, objects = train(cfg)
    assert math.isfinite(metrics["train/loss"])
    assert objects["model"].stage == "A"
