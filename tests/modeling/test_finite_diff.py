"""Finite-difference harness: self-consistency on a tiny model (2 layers, hidden 64), seconds on one thread."""
import numpy as np
import pytest
import torch

from conftest import randomize_values, tiny_config
from rosa_lightning.modeling import GradOptions, RosaConfig, build_rosa_model, rosa_layers
from rosa_lightning.modeling.finite_diff import force_bit, gradient_check, logit_grads


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matmuls: more intra-op threads only add contention on a shared CPU
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(e_scale=1.0, seed=0, injection="post_attn", dtype=None):
    torch.manual_seed(seed)
    model = build_rosa_model(tiny_config(), RosaConfig(bits=4, window=8, global_layers=0, num_threads=1,
                                                       injection=injection), torch_dtype=dtype)
    if e_scale:
        randomize_values(model, scale=e_scale, seed=seed)
    ids = torch.randint(0, 97, (2, 48), generator=torch.Generator().manual_seed(seed))

    def loss_fn(m):  # next-token cross-entropy in the model's dtype (HF's own loss upcasts to fp32 only)
        logits = m(input_ids=ids).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    return model, loss_fn


def test_forcing_the_current_bit_changes_nothing():
    model, loss_fn = make()
    layer = rosa_layers(model)[1]
    lg = logit_grads(model, layer, loss_fn)
    rng = np.random.default_rng(0)
    for stream in ("q", "k", "v"):
        for _ in range(3):
            b, t, c = int(rng.integers(2)), int(rng.integers(48)), int(rng.integers(64))
            cur = int(lg.z[stream][b, t, c] > 0)
            with torch.no_grad(), force_bit(layer, stream, b, t, c, cur):
                assert float(loss_fn(model)) == lg.loss


def test_reconstructed_logit_grads_are_the_branch_backward():
    """W^x.grad of the real backward equals grad_x^T u from the harness's reconstruction."""
    for injection in ("post_attn", "pre_attn"):
        model, loss_fn = make(injection=injection)
        layer = rosa_layers(model)[1]
        lg = logit_grads(model, layer, loss_fn)
        model.zero_grad()
        loss_fn(model).backward()
        u = lg.u.reshape(-1, 64)
        grads = lg.grads(layer.rosa.grad_options)
        for x in ("q", "k", "v"):
            expect = grads[x].reshape(-1, 64).t() @ u
            got = getattr(layer.rosa, f"{x}_proj").weight.grad
            assert torch.allclose(got, expect, rtol=1e-4, atol=1e-6), (injection, x)


def test_zero_values_make_every_probe_zero():
    model, loss_fn = make(e_scale=0.0)  # e0 = e1 = 0: the branch outputs exactly 0 whatever the bits
    res = gradient_check(model, rosa_layers(model)[0], loss_fn, num_probes=8)
    for s in res.streams.values():
        assert len(s.fd) > 0 and not s.fd.any() and not s.est.any() and np.isnan(s.pearson)


def test_v_estimate_is_first_order_exact_for_small_values():
    # V enters the forward only as y = valid * (e0 + delta * vbit): with small e the loss is nearly linear in y,
    # so the V estimate (sum of dL/dy * delta over the positions retrieving that time) is the loss difference.
    model, loss_fn = make(e_scale=1e-3, dtype=torch.float64)  # float64: loss differences of ~1e-5 are exact
    res = gradient_check(model, rosa_layers(model)[1], loss_fn, num_probes=24, streams=("v",))
    v = res.streams["v"]
    assert v.informative.sum() >= 10
    assert v.pearson > 0.999 and v.sign_agreement == 1.0 and v.coverage == 1.0
    np.testing.assert_allclose(v.est, v.fd, rtol=0.05, atol=1e-7)


def test_streams_and_summary():
    model, loss_fn = make()
    res = gradient_check(model, rosa_layers(model)[1], loss_fn, num_probes=16, seed=1)
    summary = res.summary()
    assert set(summary) == {"q", "k", "v"}
    for name, s in res.streams.items():
        assert s.where.shape == (len(s.fd), 3) and len(np.unique(s.where, axis=0)) == len(s.fd)
        assert summary[name]["n"] == len(s.fd)
    assert summary["v"]["pearson"] > 0.9  # first order is accurate for V even at unit-scale e0/e1
    with pytest.raises(ValueError, match="streams"):
        gradient_check(model, rosa_layers(model)[1], loss_fn, streams=("x",))


def test_options_change_only_their_stream():
    model, loss_fn = make()
    layer = rosa_layers(model)[1]
    ref = gradient_check(model, layer, loss_fn, num_probes=16, seed=2)
    matched = gradient_check(model, layer, loss_fn, num_probes=16, seed=2, options=GradOptions(k_credit="matched"))
    for x in ("q", "k", "v"):
        np.testing.assert_array_equal(ref.streams[x].fd, matched.streams[x].fd)  # same probes, same forward
    np.testing.assert_array_equal(ref.streams["q"].est, matched.streams["q"].est)
    np.testing.assert_array_equal(ref.streams["v"].est, matched.streams["v"].est)
    assert not np.array_equal(ref.streams["k"].est, matched.streams["k"].est)
