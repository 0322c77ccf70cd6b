"""Named counterfactual-gradient options: k_credit ("reference" = published, "matched")."""
import numpy as np
import pytest
import torch

from conftest import tiny_config
from rosa_lightning.modeling import GradOptions, RosaConfig, build_rosa_model, rosa_layers
from rosa_lightning.modeling.backward_reference import reference_branch
from rosa_lightning.modeling.counterfactual import counterfactual_logit_grads
from rosa_lightning.modeling.symbols import pack_symbols, run_starts
from rosa_lightning.retrieval.reference import rosa_match_reference


def _case(seed, B, T, M, R):
    gen = torch.Generator().manual_seed(seed)
    C = R * M
    zq, zk, zv, g = (torch.randn(B, T, C, generator=gen, dtype=torch.float64) for _ in range(4))
    zq[:, 1::3] = zq[:, 0::3][:, : zq[:, 1::3].shape[1]]  # repeated Q symbols -> Q-runs
    zk[:, 2::4] = zk[:, 1::4][:, : zk[:, 2::4].shape[1]]  # repeated K symbols -> K-runs longer than 1
    delta = torch.randn(C, generator=gen, dtype=torch.float64)
    match = rosa_match_reference(pack_symbols(zq, M), pack_symbols(zk, M), M, layout="BTR")
    return zq, zk, zv, g, delta, match


@pytest.mark.parametrize("seed,B,T,M,R", [(0, 2, 24, 2, 3), (1, 1, 40, 4, 2), (2, 2, 17, 3, 2)])
def test_matched_credit_fast_path_matches_float64_reference(seed, B, T, M, R):
    zq, zk, zv, g, delta, match = _case(seed, B, T, M, R)
    ref = reference_branch(zq, zk, zv, match.tau, match.cf_tau(), g, torch.zeros_like(delta), delta, M,
                           k_credit="matched")
    got = counterfactual_logit_grads(zq, zk, zv, match.tau, match.cf.to(torch.int16), g, delta, M,
                                     GradOptions(k_credit="matched"))
    for t, key in zip(got, ("grad_q", "grad_k", "grad_v")):
        assert np.abs(ref[key]).max() > 0
        np.testing.assert_allclose(t.double().numpy(), ref[key], atol=1e-5, rtol=1e-5)


def test_matched_credit_moves_only_k_by_one_run():
    zq, zk, zv, g, delta, match = _case(3, 2, 48, 4, 3)
    args = (zq, zk, zv, match.tau, match.cf, g, delta, 4)
    rq, rk, rv = counterfactual_logit_grads(*args, GradOptions())
    mq, mk, mv = counterfactual_logit_grads(*args, GradOptions(k_credit="matched"))
    assert torch.equal(rq, mq) and torch.equal(rv, mv)
    assert not torch.allclose(rk, mk)
    # both credit K-run starts only; the reference never credits run 0 (a destination is a successor run),
    # the matched credit does when run 1 is a destination
    k_sym = pack_symbols(zk, 4).transpose(1, 2)
    start, _ = run_starts(k_sym)
    is_start = (start == torch.arange(48)).transpose(1, 2).repeat_interleave(4, dim=-1)
    assert not rk[~is_start].any() and not mk[~is_start].any()
    assert not rk[:, 0].any() and mk[:, 0].any()


def test_config_and_layer_carry_the_option():
    with pytest.raises(ValueError, match="k_credit"):
        RosaConfig(grad=dict(k_credit="successor"))
    with pytest.raises(ValueError, match="k_credit"):
        GradOptions(k_credit="x")
    assert RosaConfig().grad.k_credit == "reference" and GradOptions().k_credit == "reference"
    model = build_rosa_model(tiny_config(), RosaConfig(bits=4, window=8, grad=dict(k_credit="matched"), runtime=dict(num_threads=1)))
    assert all(layer.rosa.grad_options.k_credit == "matched" for layer in rosa_layers(model))
