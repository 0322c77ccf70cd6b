"""experiments/step_memory: the saved-tensor count by component, the composition of the whole model from a shallow
measurement, and the seconds-long smoke run of the study's command."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.step_memory import measure
from experiments.step_memory.run import compose, layer_bytes, loss_extra_at

ROOT = Path(__file__).resolve().parents[2]
TINY_C, TINY_T = measure.SHAPES["tiny"]["hidden_size"], 256


def _tiny(arm, checkpointing=False, loss_chunk=64, tokens=TINY_T):
    return measure.measure("tiny", arm, tokens, window=32, layers=3, loss_chunk=loss_chunk,
                           checkpointing=checkpointing, threads=1)


def test_branch_adds_exactly_its_retrieval_indices():
    """A ROSA layer saves what the windowed layer saves plus tau (int16), v_at_tau (uint8) and cf (int16, a row per
    Q-run, at most T): nothing of size [T, C] more."""
    window, rosa = _tiny("window"), _tiny("window+rosa")
    bits = 4
    routes = TINY_C // bits
    extra = layer_bytes(rosa) - layer_bytes(window)
    base = routes * TINY_T * (2 + 1)  # tau + v_at_tau
    assert base < extra <= base + routes * TINY_T * bits * 2
    assert rosa["saved_bytes"]["layer 0"] == window["saved_bytes"]["layer 0"]  # layer 0 is global, no branch
    assert rosa["kept_retrieval_bytes"] == 0 and rosa["grads_finite"]


def test_checkpointing_keeps_layer_inputs_and_retrieval_results():
    plain, ckpt = _tiny("window+rosa"), _tiny("window+rosa", checkpointing=True)
    # under checkpointing a layer keeps only its input hidden states [1, T, C] in bf16
    assert ckpt["saved_bytes"]["layer 1"] == ckpt["saved_bytes"]["layer 2"] == TINY_T * TINY_C * 2
    routes = TINY_C // 4
    # the pipeline keeps tau, cf, v_at_tau and the two symbol tensors of each ROSA layer for the recompute
    assert ckpt["kept_retrieval_bytes"] >= len(ckpt["rosa_layers"]) * routes * TINY_T * (2 + 1 + 1 + 1)
    assert layer_bytes(ckpt) < layer_bytes(plain)
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert _tiny("window", checkpointing=True)["kept_retrieval_bytes"] == 0


def test_full_logits_loss_saves_more_than_chunks():
    full, chunked = _tiny("window", loss_chunk=0), _tiny("window", loss_chunk=64)
    vocab = measure.SHAPES["tiny"]["vocab_size"]
    # at least the fp32 log-softmax of [T - 1, V] is saved by the full loss; the chunks save none of it
    assert full["saved_bytes"]["loss"] >= (TINY_T - 1) * vocab * 4 > chunked["saved_bytes"]["loss"]
    assert full["loss"] == pytest.approx(chunked["loss"], rel=1e-3)


def test_compose_extrapolates_by_layer():
    r = {"saved_bytes": {"embedding": 10, "layer 0": 100, "layer 1": 200, "layer 2": 200, "shared": 50,
                         "final norm": 5, "loss": 7},
         "rosa_layers": [1, 2], "kept_retrieval_bytes": 60, "layer_param_bytes": [1000, 1100, 1100],
         "param_bytes": 5000, "layers": 3, "peak_growth_bytes": 900}
    c = compose(r, model_layers=5, loss_extra=40)
    assert c["weights"] == 5000 + 2 * 1100 and c["adamw"] == 2 * c["weights"]
    assert c["activations"] == 10 + 50 + 5 + 7 + 100 + 4 * (200 + 30) + 40
    assert c["peak"] == c["weights"] + 900 + 40 + 2 * (200 + 30 + 1100) + 2 * c["weights"]
    r["saved_bytes"]["layer 2"] = 300
    with pytest.raises(RuntimeError, match="different bytes"):
        compose(r, 5)
    est, per_token = loss_extra_at([({"peak_growth_bytes": 300, "tokens": 10}, {"peak_growth_bytes": 100})], 40)
    assert per_token == [20.0] and est == 800.0


def test_smoke_run(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "experiments.step_memory.run", "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    composed = results["composed"]
    assert len(composed) == 3 * 2 * 2
    for key, c in composed.items():
        assert c["peak"] > c["weights"] > 0, key
    # the full-logits loss costs more than the chunked one in every arm
    for arm in ("window", "window+rosa", "window+rosa-8"):
        for ckpt in (False, True):
            assert composed[f"{arm}|ckpt={ckpt}|full"]["peak"] > composed[f"{arm}|ckpt={ckpt}|chunked"]["peak"]
    assert (out / "step_memory.png").stat().st_size > 1000
    assert "window + ROSA (bits 8, recommended)" in (out / "results.md").read_text()
    # the smoke run must not overwrite the study's results
    bad = subprocess.run([sys.executable, "-m", "experiments.step_memory.run", "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--smoke needs --out" in bad.stderr
