"""Where the branch output joins the residual stream (``RosaConfig.injection``, docs/method.md §2.1): each variant
computes its documented formula, a zero branch leaves the plain layer bitwise, and incremental decoding equals the
full forward for every variant."""
import pytest
import torch

from rosa_lightning.modeling import RosaConfig, build_rosa_model, rosa_layers
from tests.generation.helpers import activate_branches, full_logits, incremental_logits, prefill_then_steps, tiny_config

INJECTIONS = ("post_attn", "post_mlp", "pre_attn")


def model_with(injection: str, active: bool = True, token_channel: str = "off"):
    torch.manual_seed(0)
    rosa = RosaConfig(window=8, global_layers=1, injection=injection, token_channel=token_channel,
                      runtime=dict(num_threads=1))
    model = build_rosa_model(tiny_config(), rosa).eval()
    if active:
        activate_branches(model, 0)
    return model


@pytest.mark.parametrize("injection", INJECTIONS)
def test_layer_computes_the_documented_formula(injection):
    model = model_with(injection)
    layer = rosa_layers(model)[0]
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    seen = {}

    def keep_out(name):
        def hook(_m, _a, out):
            seen[name] = out[0] if isinstance(out, tuple) else out
        return hook

    def keep_in(name):
        def hook(_m, args, kwargs):
            seen[name] = args[0] if args else kwargs["hidden_states"]
        return hook

    regs = [layer.register_forward_pre_hook(keep_in("x"), with_kwargs=True), layer.register_forward_hook(keep_out("out")),
            layer.self_attn.register_forward_pre_hook(keep_in("attn_in"), with_kwargs=True),
            layer.self_attn.register_forward_hook(keep_out("attn")),
            layer.post_attention_layernorm.register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0]))]
    finish, forward = layer.rosa.finish, layer.rosa.forward  # the branch output, whichever path returns it
    layer.rosa.finish = lambda pending: seen.setdefault("inj", finish(pending))
    layer.rosa.forward = lambda *a, **k: seen.setdefault("inj", forward(*a, **k))
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for r in regs:
            r.remove()
        del layer.rosa.finish, layer.rosa.forward
    x, out, inj, attn, h = seen["x"], seen["out"], seen["inj"], seen["attn"], seen["h"]
    assert inj.abs().max() > 0.1  # the branch injects something
    with torch.no_grad():
        mlp = layer.mlp(layer.post_attention_layernorm(h))
        if injection == "post_attn":  # h = (x + attn(norm x)) + inj, out = h + mlp(norm h)
            assert torch.equal(seen["attn_in"], layer.input_layernorm(x))
            assert torch.equal(h, (x + attn) + inj) and torch.equal(out, h + mlp)
        elif injection == "post_mlp":  # h = x + attn(norm x), out = (h + mlp(norm h)) + inj
            assert torch.equal(seen["attn_in"], layer.input_layernorm(x))
            assert torch.equal(h, x + attn) and torch.equal(out, (h + mlp) + inj)
        else:  # pre_attn: the plain layer on x + inj
            x2 = x + inj
            assert torch.equal(seen["attn_in"], layer.input_layernorm(x2))
            assert torch.equal(h, x2 + attn) and torch.equal(out, h + mlp)


@pytest.mark.parametrize("injection", INJECTIONS)
def test_zero_branch_is_bitwise_the_plain_model(injection):
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(2))
    model = model_with(injection, active=False)
    with torch.no_grad():  # e0 = e1 = 0 as initialised: the branch outputs exactly 0
        on = model(ids, use_cache=False).logits
        model.rosa_config.enabled = False
        off = model(ids, use_cache=False).logits
    assert torch.equal(on, off)


def test_variants_differ_once_the_branch_injects():
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(3))
    logits = {inj: full_logits(model_with(inj), ids) for inj in INJECTIONS}
    assert not torch.allclose(logits["post_attn"], logits["post_mlp"])
    assert not torch.allclose(logits["post_mlp"], logits["pre_attn"])


@pytest.mark.parametrize("token_channel", ["off", "shared"])
def test_post_mlp_decoding_equals_the_full_forward(token_channel):
    model = model_with("post_mlp", token_channel=token_channel)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(4))
    full = full_logits(model, ids)
    for chunks in (prefill_then_steps(12, 40), [7, 13, 20]):
        got = incremental_logits(model, ids, chunks)
        assert torch.allclose(got, full, atol=1e-5, rtol=1e-5), chunks


def test_unknown_injection_names_the_choices():
    with pytest.raises(ValueError, match="post_mlp"):
        RosaConfig(injection="after_everything")
