"""Learning options of the ROSA branch's inputs: kv_shift, qk_tied, center_u (``branch_inputs``).

Defaults are the published branch; with the options on: the step-0 identity, the shifted/centred/tied inputs, the
backward against a hand-written chain rule, and incremental decoding equal to the full forward.
"""
import numpy as np
import pytest
import torch
from transformers import DynamicCache

from conftest import randomize_values, tiny_config
from tests.generation.helpers import activate_branches
from rosa_lightning.generation import RosaGenerationCache
from rosa_lightning.modeling import RosaBranch, RosaConfig, build_rosa_model, rosa_layers
from rosa_lightning.modeling.branch_inputs import InputOptions, center_causal, shift_previous
from rosa_lightning.modeling.counterfactual import counterfactual_logit_grads
from rosa_lightning.modeling.finite_diff import gradient_check
from rosa_lightning.modeling.symbols import pack_symbols
from rosa_lightning.retrieval import rosa_match
from rosa_lightning.retrieval.indices import values_at
from rosa_lightning.retrieval.seam import LayerRetrieval

OPTION_SETS = [
    dict(kv_shift=True),
    dict(kv_shift=True, qk_tied=True),
    dict(center_u="causal_mean"),
    dict(kv_shift=True, qk_tied=True, center_u="causal_mean", bits=8),
]


def _model(seed=0, window=8, global_layers=1, **opts):
    torch.manual_seed(seed)
    rosa = RosaConfig.from_dict(dict(window=window, global_layers=global_layers, num_threads=1, **opts))
    return build_rosa_model(tiny_config(), rosa).eval()


def _ids(seed=0, batch=2, T=40):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (batch, T), generator=g)
    ids[:, 20:30] = torch.tensor([3, 4] * 5)
    ids[-1, 31:] = ids[-1, 2:2 + T - 31]
    return ids


def test_defaults_and_validation():
    c = RosaConfig()
    assert c.inputs == InputOptions(False, False, "off") == InputOptions()
    for bad in (dict(kv_shift=1), dict(qk_tied="yes"), dict(center_u="mean")):
        with pytest.raises(ValueError):
            RosaConfig(inputs=bad)
    model = _model(kv_shift=True, qk_tied=True, center_u="causal_mean")
    assert all(layer.rosa.input_options == InputOptions(True, True, "causal_mean") for layer in rosa_layers(model))
    # the state-dict layout is the published one
    assert set(_model().state_dict()) == set(model.state_dict())


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_step0_identity(opts):
    """e0 = e1 = 0: the logits equal the backbone without the branch, bitwise."""
    model = _model(**opts)
    ids = _ids()
    with torch.no_grad():
        on = model(ids).logits
        model.rosa_config.enabled = False
        off = model(ids).logits
    assert torch.equal(on, off)


def _capture_inputs(model, ids):
    layer = rosa_layers(model)[0]
    seen = {}
    hooks = [getattr(layer.rosa, f"{x}_proj").register_forward_pre_hook(
        lambda _m, args, x=x: seen.__setitem__(x, args[0].detach())) for x in ("q", "k", "v")]
    hooks.append(layer.input_layernorm.register_forward_hook(lambda _m, _i, out: seen.__setitem__("u", out.detach())))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return seen


def test_kv_shift_and_center_inputs():
    ids = _ids()
    s = _capture_inputs(_model(kv_shift=True), ids)
    assert torch.equal(s["q"], s["u"])
    assert torch.equal(s["k"][:, 0], torch.zeros_like(s["k"][:, 0])) and torch.equal(s["k"][:, 1:], s["u"][:, :-1])
    assert torch.equal(s["v"], s["k"])
    s = _capture_inputs(_model(center_u="causal_mean"), ids)
    u = s["u"].double()
    want = u - u.cumsum(1) / torch.arange(1, u.shape[1] + 1, dtype=torch.float64).view(1, -1, 1)
    torch.testing.assert_close(s["q"].double(), want, atol=1e-6, rtol=0)
    assert not s["q"][:, 0].any() and torch.equal(s["k"], s["q"]) and torch.equal(s["v"], s["q"])


def test_qk_tied_uses_q_weight_and_sums_gradients():
    """Tied: K logits come from q_proj.weight; its gradient is the sum of the untied Q and K gradients when the
    untied K weight equals Q's; k_proj.weight gets none."""
    ids = _ids(1)
    tied = _model(seed=3, kv_shift=True, qk_tied=True)
    untied = _model(seed=3, kv_shift=True)
    for m in (tied, untied):
        randomize_values(m, seed=5)
    with torch.no_grad():
        for lt, lu in zip(rosa_layers(tied), rosa_layers(untied)):
            lu.rosa.k_proj.weight.copy_(lt.rosa.q_proj.weight)
    for m in (tied, untied):
        m.train()
        m(ids, labels=ids).loss.backward()
    s = _capture_inputs(tied, ids)
    lt = rosa_layers(tied)[0]
    assert torch.equal(s["k"] @ lt.rosa.q_proj.weight.t(), lt.rosa.k_proj(s["k"], lt.rosa.q_proj.weight))
    for lt, lu in zip(rosa_layers(tied), rosa_layers(untied)):
        assert lt.rosa.k_proj.weight.grad is None
        g = lu.rosa.q_proj.weight.grad + lu.rosa.k_proj.weight.grad
        assert g.abs().max() > 0
        torch.testing.assert_close(lt.rosa.q_proj.weight.grad, g, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_backward_is_chain_rule_of_the_counterfactual_logit_grads(opts):
    """u.grad and the weight gradients equal the docs/gradients.md §2 logit gradients pushed through the input options by hand."""
    torch.manual_seed(0)
    bits = opts.get("bits", 4)
    io = InputOptions(**{k: v for k, v in opts.items() if k != "bits"})
    branch = RosaBranch(32, bits, input_options=io).double()
    with torch.no_grad():
        branch.e0.normal_()
        branch.e1.normal_()
        branch.out_proj.weight.add_(0.1 * torch.randn(32, 32, dtype=torch.float64))
    u = torch.randn(2, 30, 32, dtype=torch.float64)
    u[:, 10:16] = u[:, 4:10]  # a repeated stretch: retrievals
    u.requires_grad_(True)
    gout = torch.randn(2, 30, 32, dtype=torch.float64)

    class Pipe:  # synchronous stand-in for the batch retriever (the seam)
        streaming = False

        def submit(self, layer_idx, q, k, bits, want_cf, reuse=False):
            m = rosa_match(q.cpu(), k.cpu(), bits, num_threads=1, want_cf=want_cf)
            return type("H", (), {"result": lambda self_, v: LayerRetrieval(m.tau, values_at(v, m.tau), m.cf)})()

    (branch(u, 0, Pipe()) * gout).sum().backward()

    # by hand: inputs, logits, docs/gradients.md §2 logit gradients, chain rule through the input transform
    x = u.detach().clone().requires_grad_(True)
    uq = center_causal(x) if io.center_u == "causal_mean" else x
    ukv = shift_previous(uq) if io.kv_shift else uq
    wq = branch.q_proj.weight
    wk = wq if io.qk_tied else branch.k_proj.weight
    zq, zk, zv = uq @ wq.t(), ukv @ wk.t(), ukv @ branch.v_proj.weight.t()
    m = rosa_match(pack_symbols(zq, bits), pack_symbols(zk, bits), bits, num_threads=1)
    grad_y = gout @ branch.out_proj.weight
    gq, gk, gv = counterfactual_logit_grads(zq.detach(), zk.detach(), zv.detach(), m.tau, m.cf, grad_y,
                                            (branch.e1 - branch.e0).detach(), bits)
    gq, gk, gv = (g.double() for g in (gq, gk, gv))  # fp32 results, cast to the logits' dtype as the branch does
    (gx,) = torch.autograd.grad((zq * gq).sum() + (zk * gk).sum() + (zv * gv).sum(), [x])
    assert gx.abs().max() > 0
    torch.testing.assert_close(u.grad, gx, atol=1e-10, rtol=1e-8)
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    want_q = flat(gq).t() @ flat(uq.detach())
    want_k = flat(gk).t() @ flat(ukv.detach())
    if io.qk_tied:
        torch.testing.assert_close(branch.q_proj.weight.grad, want_q + want_k, atol=1e-10, rtol=1e-8)
        assert branch.k_proj.weight.grad is None
    else:
        torch.testing.assert_close(branch.q_proj.weight.grad, want_q, atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(branch.k_proj.weight.grad, want_k, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(branch.v_proj.weight.grad, flat(gv).t() @ flat(ukv.detach()), atol=1e-10, rtol=1e-8)


# ---- generation: incremental decoding equals the full forward -------------------------------------------------

def _gen_model(opts, seed=0):
    """Like the generation tests' tiny model: O(1) backbone weights, random e0/e1 and out_proj."""
    model = _model(seed=seed, **opts)
    activate_branches(model, seed)
    return model


@torch.no_grad()
def _incremental(model, ids, chunks, attention_mask=None):
    rc = RosaGenerationCache.for_model(model)
    rc.reset()
    kv = DynamicCache(config=model.config)
    mask = attention_mask if attention_mask is not None else torch.ones_like(ids)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out, t = [], 0
    for n in chunks:
        sl = slice(t, t + n)
        kw = rc.forward_kwargs(ids[:, sl], mask[:, :t + n])
        out.append(model(ids[:, sl], attention_mask=mask[:, :t + n], position_ids=pos[:, sl], cache=kv,
                         use_cache=True, **kw).logits)
        t += n
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("opts", OPTION_SETS)
@pytest.mark.parametrize("chunks", [[7, 5, 13, 1, 1, 13], [40], [16] + [1] * 24])
def test_incremental_decoding_equals_full_forward(opts, chunks):
    model = _gen_model(opts)
    ids = _ids(2)
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
        model.rosa_config.enabled = False
        off = model(ids, use_cache=False).logits
        model.rosa_config.enabled = True
    assert (want - off).abs().max() > 0.1  # the branch matters
    torch.testing.assert_close(_incremental(model, ids, chunks), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_left_padded_rows_equal_unpadded(opts):
    model = _gen_model(opts, seed=1)
    ids = _ids(3, batch=3)
    pads, T = [0, 3, 11], ids.shape[1]
    batch = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(pads):
        batch[b, p:] = ids[b, :T - p]
        mask[b, p:] = 1
    got = _incremental(model, batch, [16] + [1] * (T - 16), attention_mask=mask)
    for b, p in enumerate(pads):
        with torch.no_grad():
            want = model(ids[b:b + 1, :T - p], use_cache=False).logits
        torch.testing.assert_close(got[b:b + 1, p:], want, atol=1e-5, rtol=0)


def test_generate_runs_with_options():
    model = _gen_model(dict(kv_shift=True, qk_tied=True, center_u="causal_mean"))
    ids = _ids(4, batch=1)[:, :12]
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_finite_difference_harness_with_options():
    model = _model(seed=2, kv_shift=True, qk_tied=True, bits=8)
    randomize_values(model, scale=0.5, seed=2)
    ids = _ids(5, batch=2)[:, :32]
    layer = rosa_layers(model)[-1]
    res = gradient_check(model, layer, lambda m: m(ids, labels=ids).loss, num_probes=8)
    assert set(res.streams) == {"q", "k", "v"}
    assert all(len(s.fd) > 0 for s in res.streams.values())


# ---- gradient option: e0 term (docs/gradients.md §A1 off) ------------------------------------------------------

@pytest.mark.parametrize("k_credit", ["reference", "matched"])
@pytest.mark.parametrize("seed,B,T,M,R", [(0, 2, 24, 2, 3), (1, 1, 40, 4, 2)])
def test_e0_term_fast_path_matches_float64_reference(k_credit, seed, B, T, M, R):
    from rosa_lightning.modeling import GradOptions
    from rosa_lightning.modeling.backward_reference import reference_branch
    from rosa_lightning.retrieval.reference import rosa_match_reference
    gen = torch.Generator().manual_seed(seed)
    C = R * M
    zq, zk, zv, g = (torch.randn(B, T, C, generator=gen, dtype=torch.float64) for _ in range(4))
    zq[:, 1::3] = zq[:, 0::3][:, : zq[:, 1::3].shape[1]]
    e0, e1 = torch.randn(C, generator=gen, dtype=torch.float64), torch.randn(C, generator=gen, dtype=torch.float64)
    match = rosa_match_reference(pack_symbols(zq, M), pack_symbols(zk, M), M, layout="BTR")
    ref = reference_branch(zq, zk, zv, match.tau, match.cf_tau(), g, e0, e1, M, k_credit=k_credit, e0_term=True)
    plain = reference_branch(zq, zk, zv, match.tau, match.cf_tau(), g, e0, e1, M, k_credit=k_credit)
    got = counterfactual_logit_grads(zq, zk, zv, match.tau, match.cf.to(torch.int16), g, e1 - e0, M,
                                     GradOptions(k_credit=k_credit, e0_term=True), e0=e0)
    for t, key in zip(got, ("grad_q", "grad_k", "grad_v")):
        np.testing.assert_allclose(t.double().numpy(), ref[key], atol=1e-5, rtol=1e-5)
    assert not np.allclose(ref["grad_q"], plain["grad_q"]) and np.array_equal(ref["grad_v"], plain["grad_v"])


def test_e0_term_config_and_default():
    from rosa_lightning.modeling import GradOptions
    assert RosaConfig().grad.e0_term is False and GradOptions().e0_term is False
    with pytest.raises(ValueError):
        RosaConfig(grad=dict(e0_term="yes"))
    model = _model(cf_e0_term=True)
    assert all(layer.rosa.grad_options.e0_term for layer in rosa_layers(model))
    zq, zk, zv, g = (torch.randn(1, 12, 8) for _ in range(4))
    m = rosa_match(pack_symbols(zq, 4), pack_symbols(zk, 4), 4, num_threads=1)
    with pytest.raises(ValueError, match="e0"):
        counterfactual_logit_grads(zq, zk, zv, m.tau, m.cf, g, torch.ones(8), 4, GradOptions(e0_term=True))
    # with e0 = 0 the option is the published estimate
    a = counterfactual_logit_grads(zq, zk, zv, m.tau, m.cf, g, torch.ones(8), 4, GradOptions(e0_term=True),
                                   e0=torch.zeros(8))
    b = counterfactual_logit_grads(zq, zk, zv, m.tau, m.cf, g, torch.ones(8), 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---- kv_shift + qk_tied: K's symbols from Q's of the previous position -------------------------------------------

def _train_step(model, ids, shift_k_from_q):
    for layer in rosa_layers(model):
        layer.rosa.shift_k_from_q = shift_k_from_q
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


@pytest.mark.parametrize("opts", [dict(kv_shift=True, qk_tied=True),
                                  dict(kv_shift=True, qk_tied=True, center_u="causal_mean", bits=8)])
def test_k_from_shifted_q_equals_the_k_projection(opts):
    """The full forward's shortcut (no K projection, K's gradient merged into Q's) against the reference path that
    runs k_proj with Q's weight on the shifted input: the same logits bit for bit, the same gradients, and the K
    symbols handed to the retriever equal Q's shifted by one position."""
    ids = _ids(6)
    model = _model(seed=4, **opts)
    randomize_values(model, seed=4)
    model.train()
    layer = rosa_layers(model)[0]
    submitted = []
    real_launch = RosaBranch.launch

    def spy(self, u, layer_idx, retriever, reuse=False):
        pending = real_launch(self, u, layer_idx, retriever, reuse)
        if self is layer.rosa:
            submitted.append(pending.k_shifted_q)
        return pending

    RosaBranch.launch = spy
    try:
        fast_logits, fast = _train_step(model, ids, True)
        ref_logits, ref = _train_step(model, ids, False)
    finally:
        RosaBranch.launch = real_launch
    assert submitted == [True, False]
    assert torch.equal(fast_logits, ref_logits)
    assert set(fast) == set(ref) and not any(".rosa.k_proj." in n for n in fast)
    moved = 0
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], atol=1e-6, rtol=1e-5)
        moved += ".rosa.q_proj." in name and fast[name].abs().max() > 0
    assert moved == len(rosa_layers(model))

    # the symbols: Q's of the previous position, 0 at position 0, equal to the K projection's
    with torch.no_grad():
        u = torch.randn(2, 17, 32)
        branch = RosaBranch(32, opts.get("bits", 4), input_options=layer.rosa.input_options)
        seen = {}

        class Pipe:
            streaming = False

            def submit(self, layer_idx, q, k, bits, want_cf, reuse=False):
                seen.setdefault("qk", []).append((q, k))
                m = rosa_match(q, k, bits, num_threads=1, want_cf=False)
                return type("H", (), {"result": lambda self_, v: LayerRetrieval(m.tau, values_at(v, m.tau), None)})()

        branch(u, 0, Pipe())
        branch.shift_k_from_q = False
        branch(u, 0, Pipe())
    (q1, k1), (q2, k2) = seen["qk"]
    assert torch.equal(q1, q2) and torch.equal(k1, k2)
    assert not k1[:, 0].any() and torch.equal(k1[:, 1:], q1[:, :-1])


def test_k_projection_runs_while_hooked():
    """A hook on k_proj (the finite-difference harness forces K bits there) sees the K projection run."""
    model = _model(seed=5, kv_shift=True, qk_tied=True)
    layer = rosa_layers(model)[0]
    calls = []
    h = layer.rosa.k_proj.register_forward_hook(lambda _m, _i, out: calls.append(out.shape))
    try:
        with torch.no_grad():
            model(_ids(7))
    finally:
        h.remove()
    assert len(calls) == 1
    with torch.no_grad():
        model(_ids(7))
    assert len(calls) == 1  # no hook: the shortcut, no K projection
