"""Finite-difference probes: self-consistency on a tiny model (2 layers, hidden 64), seconds on one thread.

The probes come from the library (``rosa_lightning.modeling.finite_diff``); their agreement is scored with the
studies' statistics (``experiments.harness.statistics``)."""
import numpy as np
import pytest
import torch

from conftest import randomize_values, tiny_config
from experiments.harness.statistics import StreamAgreement, check_summary
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
    model = build_rosa_model(tiny_config(), RosaConfig(bits=4, window=8, global_layers=0, injection=injection, runtime=dict(num_threads=1)), torch_dtype=dtype)
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
    for injection in ("post_attn", "post_mlp", "pre_attn"):
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
        assert len(s.fd) > 0 and not s.fd.any() and not s.est.any() and np.isnan(StreamAgreement.of(s).pearson)


def test_v_estimate_is_first_order_exact_for_small_values():
    # V enters the forward only as y = valid * (e0 + delta * vbit): with small e the loss is nearly linear in y,
    # so the V estimate (sum of dL/dy * delta over the positions retrieving that time) is the loss difference.
    model, loss_fn = make(e_scale=1e-3, dtype=torch.float64)  # float64: loss differences of ~1e-5 are exact
    res = gradient_check(model, rosa_layers(model)[1], loss_fn, num_probes=24, streams=("v",))
    v = StreamAgreement.of(res.streams["v"])
    assert v.informative.sum() >= 10
    assert v.pearson > 0.999 and v.sign_agreement == 1.0 and v.coverage == 1.0
    np.testing.assert_allclose(v.est, v.fd, rtol=0.05, atol=1e-7)


def test_streams_and_summary():
    model, loss_fn = make()
    res = gradient_check(model, rosa_layers(model)[1], loss_fn, num_probes=16, seed=1)
    summary = check_summary(res)
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


def test_first_order_is_the_loss_difference_when_the_loss_is_linear():
    # With tiny e0/e1 the loss is linear in the injection: the first-order effect of every flip is the exact
    # difference (ceiling 1), and V's estimate is that first-order effect.
    model, loss_fn = make(e_scale=1e-4, dtype=torch.float64)
    res = gradient_check(model, rosa_layers(model)[1], loss_fn, num_probes=24)
    for x, s in res.streams.items():
        assert s.first_order is not None and (s.fd != 0).sum() >= 5, x
        assert StreamAgreement.of(s).ceiling > 0.999, x
        np.testing.assert_allclose(s.first_order, s.fd, rtol=0.05, atol=1e-9)
    assert StreamAgreement.of(res.streams["v"]).est_vs_first_order > 0.999


def test_q_estimate_with_hard_field_and_e0_term_is_first_order_exact():
    # Under cf_field="hard" + e0 term the Q counterfactual computes the flipped position's exact new output
    # (e0 + delta * V bit at the flipped destination, or 0): it differs from the first-order effect only where
    # the flip also moves other positions' retrievals (run splits, longer contexts), rare at bits = 8.
    torch.manual_seed(0)
    model = build_rosa_model(tiny_config(), RosaConfig(bits=8, window=8, global_layers=0, runtime=dict(num_threads=1)))
    randomize_values(model, scale=1.0, seed=0)
    ids = torch.randint(0, 97, (2, 48), generator=torch.Generator().manual_seed(0))

    def loss_fn(m):
        return m(input_ids=ids, labels=ids).loss

    layer = rosa_layers(model)[0]
    res = gradient_check(model, layer, loss_fn, num_probes=96, streams=("q",),
                         options=GradOptions(field="hard", e0_term=True))
    q = StreamAgreement.of(res.streams["q"])
    m = q.informative
    assert m.sum() >= 5
    close = np.isclose(q.est[m], q.first_order[m], rtol=1e-3, atol=1e-6)
    assert close.mean() >= 0.8, close.mean()
    assert q.est_vs_first_order > 0.9
    published = gradient_check(model, layer, loss_fn, num_probes=96, streams=("q",)).streams["q"]
    published = StreamAgreement.of(published)
    m = published.informative
    assert np.isclose(published.est[m], published.first_order[m], rtol=1e-3, atol=1e-6).mean() < close.mean()

