"""DataModule: determinism across worker counts, the token channel in the batch, packing, resume skip."""
import torch

from rosa_lightning.data.collate import RosaCollate
from rosa_lightning.data.datamodule import RosaDataModule
from rosa_lightning.data.packing import pack_ids
from rosa_lightning.data.resumable import SeededSampler
from rosa_lightning.data.sources import HFTextSource, SyntheticSource
from rosa_lightning.data.synthetic import MQAR
from rosa_lightning.retrieval.tokens import rosa_next_token


def _source(n=48):
    return SyntheticSource(MQAR(seq_len=64, num_pairs=4, num_keys=16, num_values=16, num_filler=16), n, 8)


def _batches(num_workers, token_channel=True):
    dm = RosaDataModule(_source(), batch_size=8, num_workers=num_workers, seed=5, token_channel=token_channel)
    return list(dm.train_dataloader())


def test_same_batches_with_0_and_2_workers():
    b0, b2 = _batches(0), _batches(2)
    assert len(b0) == len(b2) == 6
    for x, y in zip(b0, b2):
        assert x.keys() == y.keys() == {"input_ids", "labels", "answer_mask", "rosa_token_ids"}
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_token_channel_in_batch_equals_direct_call():
    for batch in _batches(2):
        assert batch["rosa_token_ids"].dtype == torch.int32
        assert torch.equal(batch["rosa_token_ids"].long(), rosa_next_token(batch["input_ids"]))


def test_labels_follow_answer_mask_and_default_to_all_tokens():
    batch = _batches(0, token_channel=False)[0]
    assert "rosa_token_ids" not in batch
    scored = batch["labels"] != -100
    assert torch.equal(scored, batch["answer_mask"])
    assert torch.equal(batch["labels"][scored], batch["input_ids"][scored])
    plain = RosaCollate()([{"input_ids": torch.arange(5)}])
    assert torch.equal(plain["labels"], plain["input_ids"])


def test_seeded_sampler_shards_and_skips():
    full = list(SeededSampler(10, seed=1))
    assert sorted(full) == list(range(10)) and full == list(SeededSampler(10, seed=1))
    assert full != list(SeededSampler(10, seed=2))
    r0, r1 = list(SeededSampler(10, 1, True, 2, 0)), list(SeededSampler(10, 1, True, 2, 1))
    assert set(r0).isdisjoint(r1) and len(r0) == len(r1) == 5
    s = SeededSampler(10, seed=1)
    s.skip = 4
    assert list(s) == full[4:] and list(s) == full  # skip applies once


def test_loader_state_resumes_mid_epoch():
    dm = RosaDataModule(_source(), batch_size=8, seed=5)
    loader = dm.train_dataloader()
    it = iter(loader)
    first = [next(it) for _ in range(2)]
    state = loader.state_dict()
    rest = list(it)
    assert state == {"epoch": 0, "batches": 2}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(again) == len(rest) == 4 and len(first) == 2
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again, rest))
    assert resumed.state_dict()["batches"] == 6


def test_pack_ids_rows_and_eos():
    rows = pack_ids([[5, 6, 7], [8, 9]], seq_len=3, eos_id=1)
    assert rows == [[5, 6, 7], [1, 8, 9]]  # stream 5 6 7 1 8 9 1 -> two full rows, tail dropped


def test_hf_text_source_tokenizes_and_packs(tiny_backbone_dir, text_corpus):
    src = HFTextSource(str(text_corpus), tokenizer=str(tiny_backbone_dir), seq_len=32, val_rows=4)
    train, val = src.build(seed=0)
    assert len(val) == 4 and len(train) > 20
    row = train[0]["input_ids"]
    assert row.shape == (32,) and row.dtype == torch.int64 and int(row.max()) < 128
    dm = RosaDataModule(src, batch_size=2, seq_len=32, seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 32) and torch.equal(batch["labels"], batch["input_ids"])
