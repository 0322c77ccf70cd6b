"""One additive sliding-window mask for every windowed layer (``windowing.shared_window_masks``): the same logits
and gradients bit for bit as transformers' boolean masks, and one mask storage saved for the backward instead of a
converted copy per layer."""
import pytest
import torch

import rosa_lightning.modeling.model as model_module
from conftest import randomize_values, tiny_config
from rosa_lightning.modeling import RosaConfig, build_rosa_model
from rosa_lightning.modeling.windowing import shared_window_masks

T, WINDOW = 40, 8


def _model(dtype=torch.float32, attn="sdpa", rosa=True):
    torch.manual_seed(0)
    opts = dict(window=WINDOW, bits=4) if rosa else dict(window=WINDOW, rosa_layers=[], runtime={"enabled": False})
    model = build_rosa_model(tiny_config(layers=4), RosaConfig.from_dict(opts), torch_dtype=dtype,
                             attn_implementation=attn)
    randomize_values(model)
    return model.train()


def _step(model, ids, mask=None):
    model.zero_grad(set_to_none=True)
    out = model(ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _without_shared(monkeypatch):
    monkeypatch.setattr(model_module, "shared_window_masks", lambda *a, **k: None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
def test_same_logits_and_gradients_bitwise(monkeypatch, dtype, padded):
    ids = torch.randint(1, 97, (2, T), generator=torch.Generator().manual_seed(1))
    mask = None
    if padded:  # left padding in the second row, as batched generation and evaluation make it
        mask = torch.ones(2, T, dtype=torch.long)
        mask[1, :7] = 0
    model = _model(dtype)
    logits, grads = _step(model, ids, mask)
    _without_shared(monkeypatch)
    ref_logits, ref_grads = _step(model, ids, mask)
    assert torch.equal(logits, ref_logits)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name


def _square_mask_storages(model, ids) -> set:
    """Storages of [.., T, T] tensors that autograd saves in the forward."""
    seen = set()

    def pack(t):
        if t.dim() == 4 and t.shape[-1] == t.shape[-2] == T:
            seen.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return seen


@pytest.mark.parametrize("rosa", [True, False])
def test_one_mask_saved_for_all_windowed_layers(monkeypatch, rosa):
    ids = torch.randint(1, 97, (1, T), generator=torch.Generator().manual_seed(2))
    model = _model(torch.bfloat16, rosa=rosa)
    assert len(_square_mask_storages(model, ids)) == 1
    _without_shared(monkeypatch)
    assert len(_square_mask_storages(model, ids)) == 3  # sdpa's converted copy in each of the 3 windowed layers


def test_transformers_masks_kept_where_they_should_be():
    model = _model()
    inner = model.model
    ids = torch.randint(1, 97, (1, T))
    assert shared_window_masks(inner, ids, None, None, None, None, True) is None  # decoding with a cache
    assert shared_window_masks(inner, ids, None, {"full_attention": None}, None, None, None) is None
    embeds, positions, masks = shared_window_masks(inner, ids, None, None, None, None, False)
    assert masks["sliding_attention"].dtype == embeds.dtype and positions.tolist() == [list(range(T))]
    seen = masks["sliding_attention"][0, 0] == 0
    expected = torch.ones(T, T, dtype=torch.bool).tril() & ~torch.ones(T, T, dtype=torch.bool).tril(-WINDOW)
    assert torch.equal(seen, expected)
    assert shared_window_masks(_model(attn="eager").model, ids, None, None, None, None, False) is None
