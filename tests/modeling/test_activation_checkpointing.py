"""Activation checkpointing with ROSA layers: exact gradients, and retrieval runs once per layer and step."""
import pytest
import torch

from conftest import randomize_values, tiny_config
from rosa_lightning.modeling import RosaConfig, attach_pipeline, build_rosa_model, rosa_layers
from rosa_lightning.retrieval import RetrievalPipeline, rosa_match


class _Counting:
    """``rosa_match`` that counts its calls (the kernel runs)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return rosa_match(*args, **kwargs)


def _model(opts, checkpointing: bool):
    torch.manual_seed(0)
    model = build_rosa_model(tiny_config(layers=3), RosaConfig.from_dict(dict(window=8, **opts)))
    randomize_values(model)
    if checkpointing:
        model.activation_checkpointing_enable()
    return model.train()


def _step(model, ids, counter):
    pipeline = RetrievalPipeline(1, match_fn=counter).start()
    attach_pipeline(model, pipeline)
    try:
        model.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
    finally:
        pipeline.close()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, pipeline


@pytest.mark.parametrize("opts", [{}, dict(kv_shift=True, qk_tied=True, bits=8), dict(injection="pre_attn"), dict(injection="post_mlp"),
                                  dict(token_channel="shared", center_u="causal_mean")])
def test_checkpointed_gradients_equal_the_plain_run_and_retrieval_runs_once(opts):
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    plain_calls, ckpt_calls = _Counting(), _Counting()
    plain = _model(opts, checkpointing=False)
    ckpt = _model(opts, checkpointing=True)
    assert ckpt.model.layers[1].gradient_checkpointing
    loss_a, grads_a, _ = _step(plain, ids, plain_calls)
    loss_b, grads_b, pipe = _step(ckpt, ids, ckpt_calls)
    layers = len(rosa_layers(ckpt))
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and any("rosa" in n for n in grads_a)
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    # the recompute of every ROSA layer was answered from its first forward: one kernel run per layer
    assert plain_calls.calls == layers and ckpt_calls.calls == layers and pipe.reused == layers


def test_a_different_input_is_not_answered_from_a_kept_result():
    counter = _Counting()
    pipe = RetrievalPipeline(1, match_fn=counter).start()
    try:
        q = torch.randint(0, 16, (1, 12, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        k = torch.randint(0, 16, (1, 12, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        first = pipe.submit(0, q, k, 4, want_cf=True, reuse=True).wait()
        other = q.clone()
        other[0, 5, 1] ^= 1
        pipe.submit(0, other, k, 4, want_cf=True, reuse=True).wait()  # not the same symbols: runs the kernel
        assert counter.calls == 2 and pipe.reused == 0
        again = pipe.submit(0, other, k, 4, want_cf=True).wait()      # the recompute of the second one
        assert counter.calls == 2 and pipe.reused == 1
        pipe.submit(0, other, k, 4, want_cf=True).wait()              # handed out once only
        assert counter.calls == 3
        ref = rosa_match(other.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), 4, 1, want_cf=True,
                         layout="BRT")
        assert torch.equal(again[0].long(), ref.tau.long()) and torch.equal(again[1].long(), ref.cf.long())
        assert not torch.equal(first[0], again[0]) or not torch.equal(first[1], again[1])
    finally:
        pipe.close()
