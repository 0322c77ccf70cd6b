"""Synthetic tasks: determinism, shapes, answer positions, and the recurring-key variant's traps."""
import dataclasses
import doctest

import numpy as np
import pytest
import torch

from rosa_lightning.data import synthetic
from rosa_lightning.data.synthetic import BOS, MQAR, Passkey, SyntheticDataset
from rosa_lightning.modeling.losses import answer_accuracy
from rosa_lightning.retrieval.tokens_reference import next_token_bruteforce

TASKS = [
    MQAR(seq_len=128, num_pairs=8, num_keys=32, num_values=32, num_filler=32),
    MQAR(seq_len=128, num_pairs=8, num_queries=4, num_keys=32, num_values=32, num_filler=32,
         filler="recurring_keys", key_recurrences=2),
    Passkey(seq_len=96, passkey_len=5),
    Passkey(seq_len=96, passkey_len=3, depth=0.25, filler="repeat"),
]


def test_docstring_examples():
    failed, attempted = doctest.testmod(synthetic)
    assert attempted >= 6 and failed == 0


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{type(t).__name__}-{t.filler}")
def test_shapes_dtypes_vocab(task):
    for seed in range(20):
        ex = task.sample(np.random.default_rng(seed))
        assert ex["input_ids"].shape == ex["answer_mask"].shape == ex["labels"].shape == (task.seq_len,)
        assert ex["input_ids"].dtype == np.int64 and ex["labels"].dtype == np.int64
        assert ex["answer_mask"].dtype == bool
        assert ex["input_ids"][0] == BOS
        assert ex["input_ids"][1:].min() >= 2 and ex["input_ids"].max() < task.vocab_size
        assert np.array_equal(ex["labels"] == -100, ~ex["answer_mask"])
        assert np.array_equal(ex["labels"][ex["answer_mask"]], ex["input_ids"][ex["answer_mask"]])


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{type(t).__name__}-{t.filler}")
def test_dataset_is_deterministic_per_index(task):
    a, b = SyntheticDataset(task, 6, seed=3), SyntheticDataset(task, 6, seed=3)
    for i in reversed(range(6)):  # order of access does not matter
        for name, value in a[i].items():
            assert torch.equal(value, b[i][name])
    other = SyntheticDataset(task, 6, seed=4)
    assert not torch.equal(a[0]["input_ids"], other[0]["input_ids"])
    assert not torch.equal(a[0]["input_ids"], a[1]["input_ids"])
    batch = torch.utils.data.default_collate([a[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, task.seq_len) and batch["answer_mask"].dtype == torch.bool
    with pytest.raises(IndexError):
        a[6]


def test_mqar_answers_are_bound_values_far_from_their_pairs():
    task = MQAR(seq_len=256, num_pairs=8, num_keys=64, num_values=64, num_filler=64)
    for seed in range(20):
        ids = task.sample(np.random.default_rng(seed))["input_ids"]
        mask = task.sample(np.random.default_rng(seed))["answer_mask"]
        binding = dict(zip(ids[1:17:2].tolist(), ids[2:18:2].tolist()))
        assert len(binding) == 8  # distinct keys
        answers = np.flatnonzero(mask)
        assert answers.tolist() == list(range(256 - 15, 256, 2))
        for t in answers:
            assert binding[int(ids[t - 1])] == ids[t]
        # every queried key is at least 256 - 1 - 16 - 16 = 223 tokens after its pair
        assert answers[0] - 1 - 15 >= 223 - 2
        filler = ids[17:240]
        assert filler.min() >= task.filler_offset


def test_mqar_recurring_keys_defeat_exact_token_matching():
    task = MQAR(seq_len=200, num_pairs=8, num_keys=32, num_values=16, num_filler=32,
                filler="recurring_keys", key_recurrences=3)
    for seed in range(10):
        ex = task.sample(np.random.default_rng(seed))
        ids, answers = ex["input_ids"], np.flatnonzero(ex["answer_mask"])
        copied = next_token_bruteforce(ids.tolist())  # the token channel: successor of the longest, latest match
        for t in answers:
            key = ids[t - 1]
            earlier = np.flatnonzero(ids[: t - 1] == key)
            assert len(earlier) == 1 + task.key_recurrences  # the binding plus the filler recurrences
            assert ids[earlier[-1] + 1] != ids[t]  # the latest occurrence is followed by a wrong value
            assert copied[t - 1] != ids[t]  # exact matching predicts a wrong answer


def test_passkey_needle_depth_and_answers():
    for depth in (0.0, 0.5, 1.0):
        task = Passkey(seq_len=64, passkey_len=4, depth=depth)
        ex = task.sample(np.random.default_rng(0))
        ids = ex["input_ids"]
        key_at = np.flatnonzero(ids == Passkey.KEY)
        assert len(key_at) == 2 and key_at[1] == 64 - 5
        expected_needle = 1 + round(depth * task.filler_len)
        assert key_at[0] == expected_needle
        assert ids[key_at[0] + 5] == Passkey.END and ids[64 - 6] == Passkey.QUERY
        assert np.array_equal(ids[key_at[0] + 1 : key_at[0] + 5], ids[-4:])
        assert np.flatnonzero(ex["answer_mask"]).tolist() == [60, 61, 62, 63]


def test_length_generalisation_by_replace():
    task = MQAR(seq_len=128, num_pairs=4)
    long = dataclasses.replace(task, seq_len=512)
    ex = long.sample(np.random.default_rng(0))
    assert ex["input_ids"].shape == (512,) and ex["answer_mask"].sum() == 4


def test_invalid_arguments_name_the_field():
    with pytest.raises(ValueError, match="seq_len"):
        MQAR(seq_len=20, num_pairs=8)
    with pytest.raises(ValueError, match="filler"):
        MQAR(filler="zeros")
    with pytest.raises(ValueError, match="depth"):
        Passkey(depth=1.5)
    with pytest.raises(ValueError, match="num_examples"):
        SyntheticDataset(MQAR(), 0)


def test_answer_accuracy_uses_shifted_logits():
    ids = torch.tensor([[1, 5, 6, 7]])
    mask = torch.tensor([[False, False, True, True]])
    logits = torch.zeros(1, 4, 10)
    logits[0, 1, 6] = 1.0  # position 1 predicts token 2 correctly
    logits[0, 2, 3] = 1.0  # position 2 predicts token 3 wrongly
    assert answer_accuracy(logits, ids, mask).item() == pytest.approx(0.5)
