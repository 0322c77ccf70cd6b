"""Batch assembly: stacking items and computing the token channel inside DataLoader workers.

The token channel (docs/retrieval.md §9) depends only on the input ids, so it is computed here, in the worker
processes, one batch ahead of the training step; with ``pin_memory`` it is already in pinned memory
when the step starts and the step does no CPU work for it.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rosa_lightning.retrieval.tokens import rosa_next_token


def token_channel_enabled(mode) -> bool:
    """``model.rosa.token_channel`` ("off" | "shared" | "own") or a bool -> whether batches carry it."""
    if isinstance(mode, bool) or mode is None:
        return bool(mode)
    if mode not in ("off", "shared", "own"):
        raise ValueError(f"token_channel must be 'off', 'shared', 'own' or a bool, got {mode!r}")
    return mode != "off"


class RosaCollate:
    """items -> batch dict.

    Batch keys:
        input_ids        int64 [B, T]
        labels           int64 [B, T]: labels[t] is the token at t, scored from the logits at t-1;
                         -100 where nothing is scored (all tokens are scored when items carry no labels)
        answer_mask      bool  [B, T], only when the items carry one
        rosa_token_ids   int32 [B, T], only with ``token_channel``: the token that followed the latest
                         longest earlier match (docs/retrieval.md §9.1), -1 where there is none

    ``token_threads``: kernel threads for the token channel inside one worker (part of the CPU budget).
    """

    def __init__(self, token_channel=False, token_threads: int = 1) -> None:
        self.token_channel = token_channel_enabled(token_channel)
        if int(token_threads) < 1:
            raise ValueError(f"token_threads must be >= 1, got {token_threads}")
        self.token_threads = int(token_threads)

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("RosaCollate got an empty list of items")
        input_ids = torch.stack([it["input_ids"] for it in items]).to(torch.int64)
        if "labels" in items[0]:
            labels = torch.stack([it["labels"] for it in items]).to(torch.int64)
        else:
            labels = input_ids.clone()
        batch = {"input_ids": input_ids, "labels": labels}
        if "answer_mask" in items[0]:
            batch["answer_mask"] = torch.stack([it["answer_mask"] for it in items]).to(torch.bool)
        if self.token_channel:
            batch["rosa_token_ids"] = rosa_next_token(input_ids, num_threads=self.token_threads).to(torch.int32)
        return batch
