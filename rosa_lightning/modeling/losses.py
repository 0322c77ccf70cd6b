"""Next-token loss and answer accuracy of a causal LM, from full logits or chunk by chunk from the hidden states.

Conventions (Hugging Face causal LM): ``labels[t]`` is the token at t, scored from the logits at t - 1;
``IGNORE_INDEX`` (-100) marks a label that is not scored. ``answer_mask[t]`` marks the answer tokens of a
synthetic task (``rosa_lightning.data.synthetic``), predicted by the logits at t - 1 as well.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

IGNORE_INDEX = -100


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token loss: logits [B, T, V] at t score labels[t + 1]; -100 labels are ignored.

    Returns (loss, number of scored tokens). Computed in fp32 whatever the logits dtype.
    """
    target = labels[:, 1:].reshape(-1)
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    n_scored = (target != IGNORE_INDEX).sum()
    if int(n_scored) == 0:
        raise ValueError("a batch without any scored label (all -100)")
    return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX), n_scored


def chunked_next_token_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor,
                            chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``shifted_cross_entropy(lm_head(hidden), labels)`` without the [B, T, V] logits.

    hidden: [B, T, C], the lm_head input; labels: [B, T], -100 = not scored. Only the scored positions go
    through ``lm_head``, ``chunk_tokens`` at a time, each chunk under activation checkpointing, so forward
    and backward hold one chunk's logits (its fp32 upcast and log-softmax included) instead of all of them.
    Returns (mean loss, number of scored tokens); the same value and gradients as the full computation to
    float rounding (summation order).
    """
    target = labels[:, 1:]
    scored = target != IGNORE_INDEX
    n_scored = scored.sum()
    if int(n_scored) == 0:
        raise ValueError("a batch without any scored label (all -100)")
    h, t = hidden[:, :-1][scored], target[scored]  # [N, C], [N]
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk_tokens):
        total = total + torch.utils.checkpoint.checkpoint(_chunk_loss_sum, h[i:i + chunk_tokens], t[i:i + chunk_tokens],
                                                          lm_head, use_reentrant=False)
    return total / n_scored, n_scored


def _chunk_loss_sum(h: torch.Tensor, t: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    return F.cross_entropy(lm_head(h).float(), t, reduction="sum")


def answer_accuracy(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of answer tokens predicted exactly (argmax), as a 0-d float32 tensor on the logits' device.

    logits: [B, T, V] (position t predicts token t + 1); input_ids: int64 [B, T]; answer_mask: bool [B, T].
    Without any answer token (an all-False mask after the shift) the accuracy is 0, not NaN: the value is
    logged per batch and averaged over an epoch, where one NaN would turn the mean into NaN, and callers that
    weight it by the number of answer tokens get 0 * 0 = 0.
    """
    mask = answer_mask[:, 1:]
    hits = (logits[:, :-1].argmax(dim=-1) == input_ids[:, 1:]) & mask
    return hits.sum().float() / mask.sum().clamp(min=1).float()


@torch.no_grad()
def chunked_answer_accuracy(hidden: torch.Tensor, lm_head: torch.nn.Module, input_ids: torch.Tensor,
                            answer_mask: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """``answer_accuracy(lm_head(hidden), ...)`` computing logits only at the answer positions, in chunks.

    hidden: [B, T, C], the lm_head input. Returns a 0-d float32 CPU tensor; 0 without any answer token, as
    ``answer_accuracy``.
    """
    mask = answer_mask[:, 1:].bool()
    h, t = hidden[:, :-1][mask], input_ids[:, 1:][mask]
    hits = sum(int((lm_head(h[i:i + chunk_tokens]).argmax(-1) == t[i:i + chunk_tokens]).sum())
               for i in range(0, h.shape[0], chunk_tokens))
    return torch.tensor(hits / max(int(mask.sum()), 1), dtype=torch.float32)
