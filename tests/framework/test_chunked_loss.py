"""The chunked next-token loss equals the full-logits loss: value, gradients of every parameter, answer accuracy,
with ignored labels, any chunk size, and the token channel on."""
import pytest
import torch

from rosa_lightning.lit_module import RosaLitModule
from rosa_lightning.modeling import RosaConfig, build_rosa_model, rosa_layers
from rosa_lightning.modeling.losses import (answer_accuracy, chunked_answer_accuracy, chunked_next_token_loss,
                                            shifted_cross_entropy)


def _model(token_channel="off"):
    from transformers import Qwen3Config

    torch.manual_seed(0)
    cfg = Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, vocab_size=97, tie_word_embeddings=True)
    model = build_rosa_model(cfg, RosaConfig(window=8, global_layers=1, token_channel=token_channel, runtime=dict(num_threads=1)))
    with torch.no_grad():
        for layer in rosa_layers(model):
            layer.rosa.e0.normal_()
            layer.rosa.e1.normal_()
    return model


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
@pytest.mark.parametrize("token_channel", ["off", "shared"])
def test_chunked_loss_equals_full_loss_and_gradients(chunk, token_channel):
    model = _model(token_channel)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 40), generator=g)
    labels = ids.clone()
    labels[:, :10] = -100  # an unscored prompt
    labels[1, 25:30] = -100
    full, n_full = shifted_cross_entropy(model(ids).logits, labels)
    ref = _grads(model, full)
    loss, n = chunked_next_token_loss(model.final_hidden_states(ids), model.lm_head, labels, chunk)
    got = _grads(model, loss)
    assert int(n) == int(n_full) == 2 * 39 - 2 * 9 - 5  # labels 1..9 of both rows and 25..29 of row 1
    torch.testing.assert_close(loss, full, rtol=1e-6, atol=1e-6)
    assert got.keys() == ref.keys() and any("rosa" in k for k in got)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)


def test_chunked_answer_accuracy_equals_full():
    model = _model()
    ids = torch.randint(0, 97, (3, 30), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 20:26] = True
    with torch.no_grad():
        logits = model(ids).logits
        # make some answers right: the input token after each answer position becomes the argmax
        ids[:, 21:27:2] = logits[:, 20:26:2].argmax(-1)
        logits = model(ids).logits
        hidden = model.final_hidden_states(ids)
    full = answer_accuracy(logits, ids, mask)
    assert 0 < float(full) < 1
    for chunk in (1, 5, 100):
        assert float(chunked_answer_accuracy(hidden, model.lm_head, ids, mask, chunk)) == pytest.approx(float(full))


def test_all_ignored_and_bad_chunk_are_refused():
    model = _model()
    ids = torch.randint(0, 97, (1, 12))
    with pytest.raises(ValueError, match="without any scored label"):
        chunked_next_token_loss(model.final_hidden_states(ids), model.lm_head, torch.full_like(ids, -100), 4)
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="loss_chunk_tokens"):
            RosaLitModule({"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16},
                          RosaConfig(window=8, global_layers=1), optimizer=torch.optim.AdamW, loss_chunk_tokens=bad)
