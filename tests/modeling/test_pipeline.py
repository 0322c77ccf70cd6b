"""Retrieval pipeline: lifecycle, equality with a direct rosa_match call, errors, thread budget."""
import os
import threading

import pytest
import torch

from conftest import randomize_values
from rosa_lightning.retrieval import RetrievalPipeline, kernel_threads
from rosa_lightning.modeling import (RosaConfig, attach_pipeline,
                                     build_rosa_model, rosa_timing_stats)
from rosa_lightning.retrieval import rosa_match


def _symbols(B=2, T=64, R=8, bits=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 1 << bits, (B, T, R), generator=g, dtype=torch.uint8),
            torch.randint(0, 1 << bits, (B, T, R), generator=g, dtype=torch.uint8))


def test_submit_matches_direct_call_in_compact_dtypes():
    q, k = _symbols()
    want = rosa_match(q, k, 4, 1, want_cf=True, layout="BTR")
    with RetrievalPipeline(num_threads=1) as pipe:
        tau, cf, retrieval_s, wait_s = pipe.submit(3, q, k, 4, want_cf=True).wait()
        tau2, cf2, _, _ = pipe.submit(3, q, k, 4, want_cf=False).wait()
    assert tau.dtype == cf.dtype == torch.int16
    assert torch.equal(tau.int(), want.tau) and torch.equal(cf.int(), want.cf)
    assert torch.equal(tau2, tau) and cf2 is None
    assert retrieval_s > 0 and wait_s >= 0 and not pipe.running


def test_worker_errors_reach_the_caller():
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    q, k = _symbols()
    with RetrievalPipeline(num_threads=1, match_fn=broken) as pipe:
        handle = pipe.submit(0, q, k, 4, want_cf=False)
        with pytest.raises(RuntimeError, match="kernel exploded"):
            handle.wait()


def test_retrieval_runs_off_the_main_thread():
    seen = []

    def recording(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return rosa_match(*args, **kwargs)

    q, k = _symbols()
    with RetrievalPipeline(num_threads=1, match_fn=recording) as pipe:
        pipe.submit(0, q, k, 4, want_cf=False).wait()
    assert seen and seen[0].startswith("rosa-retrieval")


def test_bad_inputs_and_budget():
    with pytest.raises(ValueError, match="num_threads"):
        RetrievalPipeline(num_threads=0)
    q, k = _symbols()
    with RetrievalPipeline(num_threads=1) as pipe:
        with pytest.raises(ValueError, match="uint8"):
            pipe.submit(0, q.int(), k, 4, want_cf=False)
    cores = len(os.sched_getaffinity(0))
    assert kernel_threads("auto", local_world=1, cpu_reserved=1) == max(1, cores - 1)
    assert kernel_threads("auto", local_world=64, cpu_reserved=1) == 1


def test_attached_pipeline_is_used_and_model_works_without_one(cfg, ids):
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16))
    randomize_values(model)
    with torch.no_grad():
        lazy = model(ids).logits  # lazily created pipeline
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return rosa_match(*args, **kwargs)

    with RetrievalPipeline(num_threads=1, match_fn=counting) as pipe:
        attach_pipeline(model, pipe)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, lazy)
        attach_pipeline(model, None)
    assert calls == [1]
    assert rosa_timing_stats(model)["calls"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu(cfg, ids):  # pragma: no cover - run on accelerator machines
    torch.manual_seed(0)
    model = build_rosa_model(cfg, RosaConfig(window=16))
    randomize_values(model)
    with torch.no_grad():
        want = model(ids).logits
    model.cuda()
    out = model(ids.cuda(), labels=ids.cuda())
    out.loss.backward()
    torch.testing.assert_close(out.logits.cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("defer", [False, True])
def test_cuda_gradients_match_cpu(cfg, ids, defer):  # pragma: no cover - run on accelerator machines
    """Pinned buffers, side streams, events, non-blocking copies and deferred counterfactuals on CUDA give the CPU
    path's gradients (float tolerance: the matmuls differ between devices)."""
    grads = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = build_rosa_model(cfg, RosaConfig(window=16)).to(device)
        randomize_values(model)
        pipe = RetrievalPipeline(1, defer_counterfactuals=defer if device == "cuda" else False).start()
        attach_pipeline(model, pipe)
        try:
            model(ids.to(device), labels=ids.to(device)).loss.backward()
        finally:
            pipe.close()
        grads[device] = {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
    for name, g in grads["cpu"].items():
        torch.testing.assert_close(grads["cuda"][name], g, atol=1e-4, rtol=1e-3, msg=name)
