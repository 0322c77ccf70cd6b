"""Counterfactual backward: the vector file's example, the float64 reference, the fused Function."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rosa_lightning.modeling.backward_reference import cf_tau_from_runs, reference_branch
from rosa_lightning.modeling.branch_function import BranchSpec, RosaBranchFunction
from rosa_lightning.retrieval.seam import LayerRetrieval
from rosa_lightning.modeling.counterfactual import (GradOptions, counterfactual_logit_grads, readout,
                                                    readout_grads)
from rosa_lightning.modeling.symbols import pack_symbols
from rosa_lightning.retrieval.reference import rosa_match_reference

VECTORS = Path(__file__).resolve().parents[1] / "data" / "rosa_vectors_public.json"


def _field(v):
    """Some fields are stored as JSON strings; descriptive strings stay as they are."""
    if isinstance(v, str) and v[:1] in "[{":
        return json.loads(v)
    return v


@pytest.fixture(scope="module")
def example():
    ex = json.loads(VECTORS.read_text())["backward_examples"][0]
    return {k: _field(v) for k, v in ex.items()}


def _flipped_cf(ex):
    """[1, R, NQ, M] flipped-entry times from the example's K-run-index table."""
    M, R = ex["M"], ex["R"]
    q, k = np.array(ex["q_sym"]), np.array(ex["k_sym"])
    nq = max(len(ex["r_cf_run"][r]) for r in range(R))
    out = np.full((1, R, nq, M), -1, dtype=np.int32)
    for r in range(R):
        starts = [t for t in range(len(k[r])) if t == 0 or k[r, t] != k[r, t - 1]]
        qstarts = [t for t in range(len(q[r])) if t == 0 or q[r, t] != q[r, t - 1]]
        for i, u in enumerate(qstarts):
            for j in range(M):
                n = ex["r_cf_run"][r][i][j][1 - ((q[r, u] >> j) & 1)]
                out[0, r, i, j] = starts[n] if n >= 0 else -1
    return torch.from_numpy(out)


def _tensors(ex):
    f = lambda key: torch.tensor(ex[key], dtype=torch.float32)
    zq, zk, zv, g = (f(k).unsqueeze(0) for k in ("q_vec", "k_vec", "v_vec", "grad_y"))
    tau = torch.tensor(ex["tau"], dtype=torch.int16).unsqueeze(0)
    return zq, zk, zv, g, f("e0"), f("e1"), tau


def _v_at_tau(zv, tau, bits):
    v_sym = pack_symbols(zv, bits).transpose(1, 2)
    v = torch.gather(v_sym, 2, tau.long().clamp(min=0))
    return torch.where(tau >= 0, v, 0)


def test_symbols_match_example(example):
    zq, zk, zv, *_ = _tensors(example)
    M = example["M"]
    for z, key in ((zq, "q_sym"), (zk, "k_sym"), (zv, "v_sym")):
        assert pack_symbols(z, M)[0].t().tolist() == example[key]


def test_vector_example_fast_path(example):
    zq, zk, zv, g, e0, e1, tau = _tensors(example)
    M, tol = example["M"], example["tolerance"]
    v_at = _v_at_tau(zv, tau, M)
    y = readout(tau, v_at, e0, e1, M)
    torch.testing.assert_close(y[0], torch.tensor(example["y"]), atol=tol, rtol=0)
    gq, gk, gv = counterfactual_logit_grads(zq, zk, zv, tau, _flipped_cf(example), g, e1 - e0, M)
    for got, key in ((gq, "grad_q"), (gk, "grad_k"), (gv, "grad_v")):
        torch.testing.assert_close(got[0], torch.tensor(example[key]), atol=tol, rtol=0)
    g0, g1 = readout_grads(g, tau, v_at, M)
    torch.testing.assert_close(g0, torch.tensor(example["grad_e0"]), atol=tol, rtol=0)
    torch.testing.assert_close(g1, torch.tensor(example["grad_e1"]), atol=tol, rtol=0)


def test_vector_example_float64_reference(example):
    zq, zk, zv, g, e0, e1, tau = _tensors(example)
    cf_tau = cf_tau_from_runs(example["q_sym"], example["k_sym"], example["tau"], example["r_cf_run"])
    ref = reference_branch(zq, zk, zv, tau, cf_tau[None], g, e0, e1, example["M"])
    for key in ("y", "grad_q", "grad_k", "grad_v"):
        np.testing.assert_allclose(ref[key][0], np.array(example[key]), atol=2e-7, rtol=0)
    for key in ("grad_e0", "grad_e1"):
        np.testing.assert_allclose(ref[key], np.array(example[key]), atol=2e-7, rtol=0)


def test_vector_example_through_function(example):
    """The fused Function with u = [zq | zk | zv] and selection-matrix projections, Wout = I."""
    zq, zk, zv, g, e0, e1, tau = _tensors(example)
    M, C, tol = example["M"], example["C"], example["tolerance"]
    u = torch.cat([zq, zk, zv], dim=-1).requires_grad_(True)
    eye, zero = torch.eye(C), torch.zeros(C, C)
    wq, wk, wv = (torch.cat(blocks, 1).requires_grad_(True)
                  for blocks in ((eye, zero, zero), (zero, eye, zero), (zero, zero, eye)))
    e0p, e1p, wout = e0.clone().requires_grad_(True), e1.clone().requires_grad_(True), torch.eye(C)
    found = LayerRetrieval(tau=tau, v_at_tau=_v_at_tau(zv, tau, M), cf=_flipped_cf(example).to(torch.int16))
    inj = RosaBranchFunction.apply(u, None, wq, wk, wv, e0p, e1p, wout.requires_grad_(True), found,
                                   BranchSpec(M, GradOptions(), torch.float32))
    torch.testing.assert_close(inj[0], torch.tensor(example["y"]), atol=tol, rtol=0)
    inj.backward(g)
    gu = u.grad[0]
    for part, key in zip(gu.split(C, dim=-1), ("grad_q", "grad_k", "grad_v")):
        torch.testing.assert_close(part, torch.tensor(example[key]), atol=tol, rtol=0)
    torch.testing.assert_close(e0p.grad, torch.tensor(example["grad_e0"]), atol=tol, rtol=0)
    torch.testing.assert_close(e1p.grad, torch.tensor(example["grad_e1"]), atol=tol, rtol=0)
    torch.testing.assert_close(wq.grad[:, :C], gu[:, :C].t() @ zq[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed,B,T,M,R,field", [(0, 2, 24, 2, 3, "soft"), (1, 1, 40, 4, 2, "soft"),
                                                 (2, 2, 17, 3, 2, "hard"), (3, 1, 30, 1, 4, "soft")])
def test_fast_matches_float64_reference(seed, B, T, M, R, field):
    gen = torch.Generator().manual_seed(seed)
    C = R * M
    # Few distinct symbols make long runs and many successful matches.
    zq, zk, zv, g = (torch.randn(B, T, C, generator=gen, dtype=torch.float64) for _ in range(4))
    zq[:, 1::3] = zq[:, 0::3][:, : zq[:, 1::3].shape[1]]  # some repeated Q symbols -> Q-runs
    e0, e1 = torch.randn(C, generator=gen, dtype=torch.float64), torch.randn(C, generator=gen, dtype=torch.float64)
    match = rosa_match_reference(pack_symbols(zq, M), pack_symbols(zk, M), M, layout="BTR")
    v_at = _v_at_tau(zv, match.tau, M)
    ref = reference_branch(zq, zk, zv, match.tau, match.cf_tau(), g, e0, e1, M, field)
    y = readout(match.tau, v_at, e0, e1, M)
    np.testing.assert_allclose(y.numpy(), ref["y"], atol=1e-12)
    got = counterfactual_logit_grads(zq, zk, zv, match.tau, match.cf.to(torch.int16), g, e1 - e0, M,
                                     GradOptions(field=field))
    for t, key in zip(got, ("grad_q", "grad_k", "grad_v")):
        assert np.abs(ref[key]).max() > 0
        np.testing.assert_allclose(t.double().numpy(), ref[key], atol=1e-5, rtol=1e-5)
    g0, g1 = readout_grads(g, match.tau, v_at, M)
    np.testing.assert_allclose(g0.double().numpy(), ref["grad_e0"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(g1.double().numpy(), ref["grad_e1"], atol=1e-5, rtol=1e-5)
