"""Evaluation of a trained ``RosaLitModule`` beyond its validation loop: answer accuracy of a synthetic task at
other sequence lengths, and next-token loss by position on long documents.

Both run the module's own forward (the token channel, when the model has one, is computed inside it) in eval
mode without gradients, on fixed datasets, so every arm of a study is scored on the same rows.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from rosa_lightning.data.collate import RosaCollate
from rosa_lightning.data.synthetic import SyntheticDataset


def batches(dataset: Dataset, batch_size: int, max_batches: Optional[int] = None) -> Iterator[dict]:
    """Batches of ``dataset`` in order (no shuffling), via the training collate without the token channel."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=RosaCollate(False))
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


@torch.no_grad()
def answer_accuracy(module: torch.nn.Module, dataset: Dataset, batch_size: int = 16) -> float:
    """Argmax accuracy over the answer tokens of every row (``answer_mask``), pooled over the dataset."""
    was_training = module.training
    module.eval()
    hits = total = 0
    try:
        for batch in batches(dataset, batch_size):
            logits = module(batch)
            mask = batch["answer_mask"][:, 1:]
            pred = logits[:, :-1].argmax(dim=-1)
            hits += int(((pred == batch["input_ids"][:, 1:]) & mask).sum())
            total += int(mask.sum())
    finally:
        module.train(was_training)
    if total == 0:
        raise ValueError("answer_accuracy: the dataset has no answer tokens")
    return hits / total


def task_at_length(task, seq_len: int):
    """The same synthetic task with ``seq_len`` tokens per row (more filler, same keys / needle)."""
    return dataclasses.replace(task, seq_len=int(seq_len))


def accuracy_at_lengths(module: torch.nn.Module, task, lengths: Iterable[int], num_examples: int,
                        seed: int, batch_size: int = 16) -> dict[int, float]:
    """Answer accuracy of ``module`` on ``num_examples`` rows of ``task`` at each length (rows fixed by seed)."""
    out = {}
    for n in lengths:
        data = SyntheticDataset(task_at_length(task, n), num_examples, seed=seed)
        out[int(n)] = answer_accuracy(module, data, batch_size=max(1, min(batch_size, batch_size * task.seq_len // n)))
    return out


@torch.no_grad()
def loss_by_position(module: torch.nn.Module, dataset: Dataset, batch_size: int = 8,
                     max_batches: Optional[int] = None) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy per position over the rows of ``dataset``.

    Returns (loss [T-1] float64, rows): entry t is the loss of predicting token t+1 from tokens 0..t, i.e. the
    token at position t+1 with t+1 tokens of history. Labels of -100 are not scored (entries stay NaN when no row
    scores a position).
    """
    was_training = module.training
    module.eval()
    total = count = None
    rows = 0
    try:
        for batch in batches(dataset, batch_size, max_batches):
            logits = module(batch)[:, :-1].float()
            target = batch["labels"][:, 1:]
            nll = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
            scored = (target != -100).to(torch.float64)
            nll = nll.to(torch.float64) * scored
            total = nll.sum(0) if total is None else total + nll.sum(0)
            count = scored.sum(0) if count is None else count + scored.sum(0)
            rows += int(target.shape[0])
    finally:
        module.train(was_training)
    if total is None:
        raise ValueError("loss_by_position: the dataset is empty")
    return total / count, rows


def bucket_means(values: torch.Tensor, edges: Sequence[int]) -> list[float]:
    """Means of ``values`` [N] over [edges[i], edges[i+1]) (NaN for empty buckets)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        part = values[lo:hi]
        part = part[torch.isfinite(part)]
        out.append(float(part.mean()) if part.numel() else math.nan)
    return out


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 50.0))
