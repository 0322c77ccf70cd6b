"""One definition of the loss conventions: IGNORE_INDEX and answer_accuracy are the same objects wherever the
package names them, and a batch without answer tokens has accuracy 0 (not NaN) on both paths."""
import math

import numpy as np
import torch

from rosa_lightning import lit_module
from rosa_lightning.data import synthetic
from rosa_lightning.modeling import losses, model


def test_one_definition_of_ignore_index_and_answer_accuracy():
    assert losses.IGNORE_INDEX == -100
    assert synthetic.IGNORE_INDEX is losses.IGNORE_INDEX
    assert synthetic.answer_accuracy is losses.answer_accuracy is lit_module.answer_accuracy
    assert lit_module.shifted_cross_entropy is losses.shifted_cross_entropy
    for name in ("chunked_next_token_loss", "chunked_answer_accuracy"):  # the model's chunked_loss uses them
        assert getattr(model, name) is getattr(losses, name)
    ex = synthetic.MQAR(seq_len=40, num_pairs=2, num_keys=4, num_values=4, num_filler=4).sample(np.random.default_rng(0))
    assert (ex["labels"][~ex["answer_mask"]] == losses.IGNORE_INDEX).all()


def test_empty_answer_mask_gives_zero_on_both_paths():
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (2, 6))
    hidden = torch.randn(2, 6, 8)
    head = torch.nn.Linear(8, 11, bias=False)
    # the only True entries sit at t = 0, which no logit predicts: after the shift the mask is empty
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 0] = True
    full = losses.answer_accuracy(head(hidden), ids, mask)
    chunked = losses.chunked_answer_accuracy(hidden, head, ids, mask, chunk_tokens=4)
    for acc in (full, chunked):
        assert acc.dtype == torch.float32 and acc.ndim == 0
        assert not math.isnan(float(acc)) and float(acc) == 0.0
    # and a weighted mean over batches stays finite: 0 * 0 contributes nothing
    assert float(full) * int(mask[:, 1:].sum()) == 0.0


def test_answer_accuracy_full_and_chunked_agree_on_a_partial_mask():
    torch.manual_seed(1)
    ids = torch.randint(0, 5, (3, 9))
    hidden = torch.randn(3, 9, 4)
    head = torch.nn.Linear(4, 5, bias=False)
    mask = torch.rand(3, 9) < 0.5
    mask[0, 1] = True
    with torch.no_grad():
        full = losses.answer_accuracy(head(hidden), ids, mask)
    for chunk in (1, 3, 50):
        assert float(losses.chunked_answer_accuracy(hidden, head, ids, mask, chunk)) == float(full)
