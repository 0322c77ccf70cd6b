"""Deferred counterfactuals: the forward waits only for tau; the backward gets the same cf (bit-exact)."""
import threading

import pytest
import torch

from conftest import randomize_values, tiny_config
from rosa_lightning.modeling import RosaConfig, attach_pipeline, build_rosa_model, rosa_timing_stats
from rosa_lightning.retrieval import RetrievalPipeline, rosa_match
from rosa_lightning.retrieval.worker import CRITICAL, DEFERRED, DaemonWorker


def _grads(opts, defer, checkpointing=False, ids=None):
    torch.manual_seed(0)
    model = build_rosa_model(tiny_config(layers=3), RosaConfig.from_dict(dict(window=8, **opts)))
    randomize_values(model)
    if checkpointing:
        model.activation_checkpointing_enable()
    model.train()
    pipe = RetrievalPipeline(1, defer_counterfactuals=defer).start()
    attach_pipeline(model, pipe)
    try:
        loss = model(ids, labels=ids).loss
        loss.backward()
        stats = rosa_timing_stats(model)
    finally:
        pipe.close()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, stats


@pytest.mark.parametrize("opts", [{}, dict(kv_shift=True, qk_tied=True, bits=8), dict(injection="pre_attn"),
                                  dict(injection="post_mlp")])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_deferred_equals_immediate(opts, checkpointing):
    ids = torch.randint(0, 97, (2, 48), generator=torch.Generator().manual_seed(3))
    loss_a, grads_a, stats_a = _grads(opts, False, checkpointing, ids)
    loss_b, grads_b, stats_b = _grads(opts, True, checkpointing, ids)
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    assert stats_a["deferred_cpu_s"] == 0 and stats_b["deferred_cpu_s"] > 0  # the deferred jobs ran
    assert stats_b["backward_wait_s"] >= 0


def test_deferred_cf_are_the_kernels_and_tau_is_untouched():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 4, (2, 40, 5), dtype=torch.uint8, generator=g)  # few symbols: many matches and flips
    k = torch.randint(0, 4, (2, 40, 5), dtype=torch.uint8, generator=g)
    ref = rosa_match(q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), 2, 1, want_cf=True,
                     layout="BRT")
    with RetrievalPipeline(1, defer_counterfactuals=True) as pipe:
        handle = pipe.submit(0, q, k, 2, want_cf=True)
        tau, cf, _, _ = handle.wait()
        assert not handle.cf_deferred.done()  # held back until the forward ends
        pipe.end_forward()
        assert cf is None and handle.cf_deferred is not None
        seen = []
        handle.cf_deferred.on_wait = lambda blocked, kernel: seen.append((blocked, kernel))
        deferred = handle.cf_deferred.wait()
        assert torch.equal(tau.long(), ref.tau.long()) and torch.equal(deferred.long(), ref.cf.long())
        assert len(seen) == 1 and seen[0][1] > 0
        handle.cf_deferred.wait()
        assert len(seen) == 1  # reported once
        # not deferred when no gradient needs them, nor by default on the CPU
        assert pipe.submit(0, q, k, 2, want_cf=False).cf_deferred is None
    with RetrievalPipeline(1) as pipe:
        assert pipe.defers(torch.device("cpu")) is False and pipe.defers(torch.device("cuda")) is True
        assert pipe.submit(0, q, k, 2, want_cf=True).cf_deferred is None
    with pytest.raises(ValueError, match="defer_counterfactuals"):
        RetrievalPipeline(1, defer_counterfactuals="sometimes")


def test_worker_holds_deferred_jobs_until_released_then_runs_them_latest_first():
    worker = DaemonWorker("test-worker")
    gate, order = threading.Event(), []
    try:
        first = worker.submit(gate.wait)  # holds the worker until every job below is queued
        jobs = [worker.submit(order.append, "cf1", priority=DEFERRED), worker.submit(order.append, "tau1"),
                worker.submit(order.append, "cf2", priority=DEFERRED), worker.submit(order.append, "tau2",
                                                                                      priority=CRITICAL)]
        gate.set()
        for job in (first, jobs[1], jobs[3]):
            job.result(10)
        assert order == ["tau1", "tau2"] and not jobs[0].done()  # the forward is not over: nothing deferred ran
        late = worker.submit(order.append, "tau3")
        worker.release()
        for job in [late, *jobs]:
            job.result(10)
        assert order == ["tau1", "tau2", "tau3", "cf2", "cf1"]  # the backward's order: the last layer first
        with pytest.raises(ValueError, match="priority"):
            worker.submit(order.append, "x", priority=5)
    finally:
        gate.set()
        worker.shutdown(10)


def test_a_layer_submitted_again_before_the_forward_ended_does_not_hang():
    """A forward that raised before its end leaves deferred jobs held back; the layer's next submit, which needs
    its previous deferred job out of the host buffers, releases and waits for it instead of hanging."""
    q = torch.randint(0, 16, (1, 20, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with RetrievalPipeline(1, defer_counterfactuals=True, wait_timeout_s=30) as pipe:
        first = pipe.submit(3, q, q.flip(1).contiguous(), 4, want_cf=True)
        first.wait()
        second = pipe.submit(3, q, q, 4, want_cf=True)
        assert first.cf_deferred.done()
        pipe.end_forward()
        assert second.cf_deferred.wait() is not None
