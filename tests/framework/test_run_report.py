"""Readable results: a metrics CSV whatever the logger, the end-of-training summary, an 80-column
progress bar, log lines printed once, run folders named after the data, and a resume of a finished run
that says so."""
import csv
import io
import logging
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from rosa_lightning.cli import train
from tests.framework.conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.val_check_interval=2",
         "data.source.num_val=16", "callbacks.model_checkpoint.every_n_train_steps=2"]


@pytest.mark.parametrize("data, task_name, tag", [("mqar", "mqar_recall", "mqar"),
                                                  ("passkey", "passkey_recall", "passkey"),
                                                  ("stdlib", "stdlib_text", "stdlib")])
def test_task_name_and_tags_follow_the_data(make_cfg, data, task_name, tag):
    cfg = make_cfg(f"data={data}")
    assert cfg.task_name == task_name and tag in cfg.tags and (data == "mqar") == ("mqar" in cfg.tags)


def test_an_experiment_that_names_itself_keeps_its_name(make_cfg):
    assert make_cfg("experiment=longbench").task_name == "longbench"
    assert make_cfg("data=passkey", "task_name=mine").task_name == "mine"


def test_metrics_csv_without_any_logger(make_cfg, tmp_path):
    train(make_cfg(*SHORT, "logger=none"))
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert [r["step"] for r in rows if r.get("train/loss")] == ["0", "1"]
    assert any(r.get("val/answer_acc") for r in rows)


def test_csv_logger_is_not_doubled(make_cfg, tmp_path):
    _, objects = train(make_cfg(*SHORT, "logger=csv", "trainer.limit_val_batches=0"))
    assert [type(lg).__name__ for lg in objects["logger"]] == ["CSVLogger"]
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["version_0"]


def test_summary_names_final_metrics_and_every_file(make_cfg, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rosa_lightning.cli"):
        train(make_cfg(*SHORT, "logger=csv"))
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Run finished")]
    lines = summary.splitlines()
    assert lines[0].startswith("Run finished: steps 0..2 in 0 min")
    assert "val/answer_acc" in summary and "train/loss" in summary
    files = {line.split()[0]: line.split()[-1] for line in lines if line.startswith("  ") and "/" in line.split()[-1]}
    assert files["run"] == str(tmp_path) and files["checkpoints"] == "checkpoints/"
    assert files["adapter"] == "adapter/rosa_adapter.safetensors" and files["metrics"] == "csv/version_0/metrics.csv"
    assert files["model"] == "model/"
    metric_lines = lines[1:next(i for i, line in enumerate(lines) if line.startswith("  run dir"))]
    assert metric_lines and all(len(line) <= 80 for line in metric_lines)


def _train_dir(tmp_path_factory, name, overrides):
    out = tmp_path_factory.mktemp(name)
    return train(compose_cfg(out, ["logger=csv", "trainer.limit_val_batches=0", *overrides])), out


def test_resuming_a_finished_run_says_how_to_extend_it(tmp_path_factory, caplog):
    _, first = _train_dir(tmp_path_factory, "first", ["trainer.max_steps=2"])
    last = first / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.WARNING, logger="rosa_lightning.cli"):
        (_, objects), _ = _train_dir(tmp_path_factory, "again", ["trainer.max_steps=2", f"ckpt_path={last}"])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "is a finished run" in warning and "stopped at step 2" in warning and "nothing was trained" in warning
    # Lightning counts the epoch of a run stopped by max_steps as done, so both limits must grow
    assert "trainer.max_steps=<more than 2> trainer.max_epochs=<more than 1>" in warning
    (_, objects), _ = _train_dir(tmp_path_factory, "extended",
                                 ["trainer.max_steps=4", "trainer.max_epochs=2", f"ckpt_path={last}"])
    assert objects["trainer"].global_step == 4


class BarProbe(L.Callback):
    """Renders the progress bar at 80 columns at the last training batch (after one validation)."""

    rendered: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from rich.console import Console

        if trainer.global_step < trainer.max_steps - 1:
            return
        progress = trainer.progress_bar_callback.progress
        console = Console(width=80, file=io.StringIO(), color_system=None)
        console.print(progress.make_tasks_table([t for t in progress.tasks if t.visible]))
        BarProbe.rendered.append((console.file.getvalue(), sum(t.visible for t in progress.tasks)))


def test_progress_bar_keeps_one_line_per_task_at_80_columns(make_cfg):
    BarProbe.rendered.clear()
    train(make_cfg("trainer.max_steps=3", "trainer.val_check_interval=2", "data.source.num_val=16", "logger=csv",
                   "trainer.enable_progress_bar=true", "+callbacks.probe._target_=" + __name__ + ".BarProbe"))
    ((text, tasks),) = BarProbe.rendered
    lines = text.rstrip("\n").splitlines()
    assert len(lines) == tasks and all(len(line) <= 80 for line in lines), text
    assert "loss:" in lines[0] and "val_acc:" in lines[0] and "v_num" not in text


def test_lightning_lines_print_once_and_the_summary_comes_last(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "trainer.fast_dev_run=true", "logger=csv"]
    proc = subprocess.run(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert out.count("Running in `fast_dev_run` mode") == 1, out[-3000:]
    lines = out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if "Run finished: steps 0..1" in line)
    assert lines[start + 1:] and all(line.startswith("  ") for line in lines[start + 1:]), lines[start:]
