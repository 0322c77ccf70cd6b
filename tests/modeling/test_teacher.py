"""HashTeacher: a fixed pseudo-random hash of the token id as the target of every ROSA layer's Q logits."""
import pytest
import torch

from conftest import tiny_config
from rosa_lightning.modeling import RosaConfig, build_rosa_model, rosa_layers
from rosa_lightning.modeling.symbols import pack_symbols
from rosa_lightning.modeling.teacher import HashTeacher, hash_bits


def test_hash_bits_are_a_balanced_fixed_function_of_token_and_channel():
    ids = torch.arange(5000)
    bits = hash_bits(ids, 64, seed=3)
    assert bits.shape == (5000, 64) and set(bits.unique().tolist()) == {0.0, 1.0}
    assert abs(bits.mean().item() - 0.5) < 0.01
    assert abs(bits[:, 0].mean().item() - 0.5) < 0.03 and abs(bits[0].mean().item() - 0.5) < 0.25
    assert torch.equal(hash_bits(ids.view(50, 100), 64, seed=3), bits.view(50, 100, 64))  # per token, any shape
    assert not torch.equal(hash_bits(ids, 64, seed=4), bits)
    # distinct tokens get distinct 16-bit codes almost always
    codes = {tuple(row) for row in hash_bits(torch.arange(200), 16).int().tolist()}
    assert len(codes) >= 199
    with pytest.raises(ValueError, match="channels"):
        hash_bits(ids, 0)


def test_teacher_loss_trains_q_symbols_into_the_token_hash():
    torch.manual_seed(0)
    cfg = RosaConfig(bits=8, window=8, global_layers=0, rosa_layers=[1], inputs=dict(kv_shift=True, qk_tied=True), runtime=dict(num_threads=1))
    model = build_rosa_model(tiny_config(), cfg)
    teacher = HashTeacher(model, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        ids = torch.randint(0, 97, (8, 32), generator=gen)
        model(input_ids=ids)
        loss = teacher.loss(ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # layer 1's Q symbols now follow the token's hash: same token -> same symbol, wherever it stands
    ids = torch.randint(0, 97, (4, 32), generator=gen)
    seen = {}
    h = rosa_layers(model)[0].rosa.q_proj.register_forward_hook(lambda _m, _i, out: seen.__setitem__("z", out))
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    sym = pack_symbols(seen["z"], 8)  # [B, T, R]
    target = pack_symbols(hash_bits(ids, sym.shape[-1] * 8, seed=1) * 2 - 1, 8)
    assert (sym == target).float().mean() > 0.5
    teacher.close()
    model(input_ids=ids)
    with pytest.raises(RuntimeError, match="forward"):
        teacher.loss(ids)


def test_teacher_rejects_mismatched_ids_and_models_without_rosa():
    model = build_rosa_model(tiny_config(), RosaConfig(bits=4, window=8, runtime=dict(num_threads=1)))
    teacher = HashTeacher(model)
    model(input_ids=torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        teacher.loss(torch.zeros(2, 11, dtype=torch.long))
    off = build_rosa_model(tiny_config(), RosaConfig(bits=4, window=8, rosa_layers=[], runtime=dict(num_threads=1)))
    with pytest.raises(ValueError, match="no ROSA layer"):
        HashTeacher(off)
