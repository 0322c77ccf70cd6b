"""End of training: the final last.ckpt before the exports, a failing export that keeps it, the merged HF model
directory (with the tokenizer where the run has one), stale temporaries removed, consistent file permissions."""
import os
import stat
import subprocess
import sys

import pytest
import torch

from rosa_lightning.callbacks.adapter import ExportError
from rosa_lightning.cli import train
from rosa_lightning.fileio import temp_path

SHORT = ["logger=csv", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "data.batch_size=4",
         "data.source.num_train=64"]


def test_failing_adapter_export_keeps_the_final_checkpoint(make_cfg, tmp_path):
    (tmp_path / "adapter").write_text("a file where the adapter directory should be")
    with pytest.raises(ExportError, match=r"ROSA adapter could not be written to .*adapter .*"
                                          r"the final checkpoint .*last.ckpt is kept"):
        train(make_cfg(*SHORT, "trainer.max_steps=3"))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3  # not a periodic checkpoint: every_n_train_steps is 200


def test_merged_model_reloads_with_the_same_logits(make_cfg, tmp_path, caplog):
    from rosa_lightning.modeling import RosaQwen3ForCausalLM, read_adapter_metadata

    with caplog.at_level("INFO", logger="rosa_lightning.callbacks.adapter"):
        _, objects = train(make_cfg(*SHORT, "trainer.max_steps=2"))
    merged = tmp_path / "model"
    again = RosaQwen3ForCausalLM.from_pretrained(merged).eval()
    model = objects["model"].model.eval()
    assert again.config.rosa == model.rosa_config.to_dict()
    assert list(merged.glob("*.safetensors")) and not list(merged.glob("tokenizer*"))
    assert "without a tokenizer" in caplog.text
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-6)
    assert read_adapter_metadata(tmp_path / "adapter")["backbone_trained"] is True  # the default run is stage B


def test_merged_model_holds_the_backbone_tokenizer(make_cfg, tiny_backbone_dir, text_corpus, tmp_path):
    from transformers import AutoTokenizer

    from rosa_lightning.modeling import read_adapter_metadata

    train(make_cfg("experiment=longbench", "trainer.max_steps=1", f"model.backbone={tiny_backbone_dir}",
                   f"data.source.path={text_corpus}", "data.seq_len=64", "model.rosa.window=32", "data.num_workers=0",
                   "logger=csv", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
                   "trainer.precision=32-true", "model.torch_dtype=null"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert tok("w3 w5")["input_ids"] == AutoTokenizer.from_pretrained(tiny_backbone_dir)("w3 w5")["input_ids"]
    assert read_adapter_metadata(tmp_path / "adapter")["backbone_trained"] is False  # stage A


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed_at_start(make_cfg, tmp_path):
    ckpts, adapter = tmp_path / "checkpoints", tmp_path / "adapter"
    ckpts.mkdir()
    adapter.mkdir()
    dead = _dead_pid()
    stale = [ckpts / f".last.ckpt.tmp-{dead}", temp_path(adapter / "rosa_adapter.safetensors").with_name(
        f".rosa_adapter.safetensors.tmp-{os.uname().nodename}-{dead}"), tmp_path / f".model.tmp-{dead}"]
    alive = ckpts / f".last.ckpt.tmp-{os.getpid()}"  # a writer that still runs: left alone
    other_host = ckpts / f".last.ckpt.tmp-elsewhere-{dead}"  # its pid means nothing on this machine
    unrelated = ckpts / "notes.tmp-123"
    for p in [*stale, alive, other_host, unrelated]:
        p.write_bytes(b"partial")
    train(make_cfg(*SHORT, "trainer.max_steps=1"))
    assert not any(p.exists() for p in stale)
    assert alive.exists() and other_host.exists() and unrelated.exists()


def test_adapter_and_checkpoint_permissions_follow_the_umask(make_cfg, tmp_path):
    old = os.umask(0o027)
    try:
        train(make_cfg(*SHORT, "trainer.max_steps=1"))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in
             [tmp_path / "checkpoints" / "last.ckpt", tmp_path / "adapter" / "rosa_adapter.safetensors",
              tmp_path / "model" / "config.json"]}
    assert set(modes.values()) == {0o640}, modes
