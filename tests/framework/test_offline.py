"""Unusable model / dataset references fail within seconds with a message naming the config key."""
import time

import hydra
import pytest
from hydra.errors import InstantiationException

from rosa_lightning.data.hub import ResourceUnavailableError, resolve_reference
from rosa_lightning.data.loading import load_hf_split


def _quick(fn, limit_s=10.0):
    t0 = time.perf_counter()
    with pytest.raises((ResourceUnavailableError, InstantiationException)) as info:
        fn()
    assert time.perf_counter() - t0 < limit_s
    return str(info.value)


def test_missing_local_backbone_path(make_cfg, tmp_path):
    cfg = make_cfg(f"model.backbone={tmp_path}/no_such_model")
    msg = _quick(lambda: hydra.utils.instantiate(cfg.model))
    assert "does not exist" in msg and "model.backbone=DIR" in msg


def test_uncached_hub_id_offline(make_cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_cfg("model.backbone=rosa-test-org/not-a-cached-model")
    msg = _quick(lambda: hydra.utils.instantiate(cfg.model))
    assert "offline" in msg and "model.backbone=DIR" in msg


def test_unreachable_hub(monkeypatch):
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    msg = _quick(lambda: resolve_reference("rosa-test-org/not-a-cached-model", what="backbone",
                                           config_key="model.backbone", timeout_s=2.0))
    assert "cannot be reached" in msg and "model.backbone=DIR" in msg


def test_dataset_references(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    msg = _quick(lambda: load_hf_split("rosa-test-org/not-a-cached-dataset", "train"))
    assert "data.source.path=DIR" in msg
    msg = _quick(lambda: load_hf_split(str(tmp_path / "missing.jsonl"), "train"))
    assert "does not exist" in msg
