"""grad_mode="relaxed": soft-match Q/K gradients against a float64 per-position transcription, and plumbing."""
import warnings

import numpy as np
import pytest
import torch

from conftest import tiny_config
from rosa_lightning.modeling import GradOptions, RosaConfig, build_rosa_model, rosa_layers
from rosa_lightning.modeling.counterfactual import counterfactual_logit_grads
from rosa_lightning.modeling.relaxed import relaxed_qk_grads
from rosa_lightning.modeling.symbols import pack_symbols
from rosa_lightning.retrieval.reference import rosa_match_reference


def soft_match_loss(zq, zk, zv, g, delta, M, beta, field):
    """sum_t G[t] . ysoft[t], written per pair and position in float64 (autograd gives the reference grads)."""
    B, T, C = zq.shape
    total = zq.new_zeros(())
    for b in range(B):
        for r in range(C // M):
            ch = slice(r * M, (r + 1) * M)
            for t in range(1, T):
                scores = torch.stack([beta * (torch.tanh(zq[b, t, ch] / 2) * torch.tanh(zk[b, s, ch] / 2)).sum()
                                      for s in range(t)])
                p = torch.softmax(scores, 0)
                fv = torch.sigmoid(zv[b, 1:t + 1, ch]) if field == "soft" else (zv[b, 1:t + 1, ch] > 0).double()
                y = (p[:, None] * fv * delta[ch]).sum(0)
                total = total + (g[b, t, ch] * y).sum()
    return total


@pytest.mark.parametrize("seed,B,T,M,R,beta,field,max_elements", [
    (0, 2, 12, 2, 3, 1.0, "soft", 1 << 24),
    (1, 1, 17, 4, 2, 3.0, "hard", 1 << 24),
    (2, 2, 9, 3, 2, 0.5, "soft", 7),  # tiny blocks: one query row at a time
])
def test_relaxed_grads_match_float64_transcription(seed, B, T, M, R, beta, field, max_elements):
    gen = torch.Generator().manual_seed(seed)
    C = R * M
    zq, zk, zv, g = (torch.randn(B, T, C, generator=gen, dtype=torch.float64) * 2 for _ in range(4))
    delta = torch.randn(C, generator=gen, dtype=torch.float64)
    zq_l, zk_l = zq.clone().requires_grad_(True), zk.clone().requires_grad_(True)
    rq, rk = torch.autograd.grad(soft_match_loss(zq_l, zk_l, zv, g, delta, M, beta, field), (zq_l, zk_l))
    gq, gk = relaxed_qk_grads(zq, zk, zv, g, delta, M, beta, field, max_elements=max_elements)
    assert rq.abs().max() > 0 and rk.abs().max() > 0
    np.testing.assert_allclose(gq.double().numpy(), rq.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(gk.double().numpy(), rk.numpy(), atol=1e-5, rtol=1e-4)
    assert not gk[:, -1].any()  # the last key leads to no destination


def test_relaxed_mode_keeps_the_published_v_gradient():
    gen = torch.Generator().manual_seed(3)
    B, T, M, R = 2, 20, 4, 2
    zq, zk, zv, g = (torch.randn(B, T, R * M, generator=gen) for _ in range(4))
    delta = torch.randn(R * M, generator=gen)
    match = rosa_match_reference(pack_symbols(zq, M), pack_symbols(zk, M), M, layout="BTR")
    args = (zq, zk, zv, match.tau, match.cf, g, delta, M)
    pq, pk, pv = counterfactual_logit_grads(*args, GradOptions())
    xq, xk, xv = counterfactual_logit_grads(*args, GradOptions(mode="relaxed", relax_beta=2.0))
    assert torch.equal(pv, xv)
    eq, ek = relaxed_qk_grads(zq, zk, zv, g, delta, M, 2.0, "soft")
    assert torch.equal(xq, eq) and torch.equal(xk, ek) and not torch.allclose(xq, pq)


def test_options_are_validated_and_carried():
    with pytest.raises(ValueError, match="GradOptions.mode"):
        RosaConfig(grad=dict(mode="soft"))
    with pytest.raises(ValueError, match="relax_beta"):
        RosaConfig(grad=dict(relax_beta=0))
    with pytest.raises(ValueError, match="relax_beta"):
        GradOptions(relax_beta=-1.0)
    with pytest.raises(ValueError, match="mode"):
        GradOptions(mode="x")
    with pytest.raises(ValueError, match="beta"):
        relaxed_qk_grads(*(torch.zeros(1, 4, 4) for _ in range(4)), torch.zeros(4), 4, beta=0.0)
    model = build_rosa_model(tiny_config(), RosaConfig(bits=4, window=8, grad=dict(mode="relaxed", relax_beta=2.5), runtime=dict(num_threads=1)))
    opts = rosa_layers(model)[0].rosa.grad_options
    assert opts.mode == "relaxed" and opts.relax_beta == 2.5


def test_relaxed_training_step_reaches_q_and_k():
    torch.manual_seed(0)
    model = build_rosa_model(tiny_config(), RosaConfig(bits=4, window=8, global_layers=0, grad=dict(mode="relaxed"), runtime=dict(num_threads=1)))
    with torch.no_grad():
        for layer in rosa_layers(model):
            layer.rosa.e1.fill_(0.5)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    for layer in rosa_layers(model):
        for name in ("q_proj", "k_proj", "v_proj"):
            w = getattr(layer.rosa, name).weight.grad
            assert w is not None and torch.isfinite(w).all() and w.abs().max() > 0, name


def test_large_cpu_problems_are_warned_about(monkeypatch):
    import rosa_lightning.modeling.relaxed as relaxed

    z = torch.zeros(1, 64, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relaxed_qk_grads(z, z, z, z, torch.zeros(8), 4)  # small: silent
    monkeypatch.setattr(relaxed, "CPU_WARN_MACS", 10.0)
    with pytest.warns(RuntimeWarning, match="O\\(T\\^2\\)"):
        relaxed_qk_grads(z, z, z, z, torch.zeros(8), 4)
