"""Checks that stop a run early and clearly instead of training on (or saving) something wrong.

``RosaLitModule`` calls them: a non-finite loss or gradient, token ids outside the vocabulary, and
configurations that cannot train what they describe (no ROSA layer, a window no row is longer than).
"""
from __future__ import annotations

from typing import Optional

import torch

NONFINITE_MODES = ("raise", "skip")


def check_nonfinite_mode(mode: str) -> str:
    if mode not in NONFINITE_MODES:
        raise ValueError(f"model.nonfinite must be one of {NONFINITE_MODES}, got {mode!r}")
    return mode


def nonfinite_loss_error(loss: torch.Tensor, step: int) -> FloatingPointError:
    return FloatingPointError(f"the training loss is {float(loss.detach())} at step {step}; training stops here "
                              f"(no checkpoint of this state is written). Lower the learning rate (model.lr), clip "
                              f"gradients (trainer.gradient_clip_val), or set model.nonfinite=skip to skip such steps")


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2), the tensor itself otherwise."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def first_nonfinite_grad(model: torch.nn.Module) -> Optional[str]:
    """Name of the first parameter whose gradient holds NaN or inf, or None (one device sync when all are finite).
    For a sharded model only this rank's shards are checked."""
    # a sharded model's gradients are DTensors: this rank checks its own shards (the caller combines the ranks)
    named = [(n, _local(p.grad)) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    flags = torch.stack([torch.isfinite(g).all() for _, g in named])
    if bool(flags.all()):
        return None
    return named[int((~flags).nonzero()[0])][0]


def nonfinite_grad_error(name: str, step: int) -> FloatingPointError:
    return FloatingPointError(f"the gradient of {name} holds NaN or inf at step {step}; training stops here (no "
                              f"checkpoint of this state is written). Lower the learning rate (model.lr), clip "
                              f"gradients (trainer.gradient_clip_val), or set model.nonfinite=skip to skip such steps")


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Raise ``ValueError`` naming the first id of ``input_ids`` [B, T] outside [0, vocab_size) and where it is."""
    if input_ids.numel() == 0:
        return
    lo, hi = torch.aminmax(input_ids)
    if int(lo) >= 0 and int(hi) < vocab_size:
        return
    bad = ((input_ids < 0) | (input_ids >= vocab_size)).nonzero()[0].tolist()
    value = int(input_ids[tuple(bad)])
    where = f"row {bad[0]}, position {bad[1]}" if len(bad) == 2 else f"index {bad}"
    raise ValueError(f"input id {value} (batch {where}) is outside the model's vocabulary [0, {vocab_size}); the "
                     f"data was tokenised with another tokenizer than model.backbone's, or a synthetic task uses "
                     f"more symbols than the backbone's vocab_size")


def check_has_rosa(n_rosa_layers: int, rosa) -> None:
    """ROSA enabled but nothing to train or retrieve: no ROSA layer and no token channel."""
    if rosa.enabled and n_rosa_layers == 0 and rosa.token_channel == "off":
        raise ValueError(f"model.rosa gives no ROSA layer (rosa_layers={rosa.rosa_layers}, global_layers="
                         f"{rosa.global_layers}) and the token channel is off, so there is nothing for ROSA to do; "
                         f"lower model.rosa.global_layers below the number of layers, list model.rosa.rosa_layers, "
                         f"or set model.rosa.runtime.enabled=false for a model without ROSA")


def check_window_fits(window: Optional[int], n_windowed_layers: int, row_tokens: int) -> None:
    """A sliding window at least as long as every training row never limits attention during training:
    the model would train as a global one and meet its window only in generation, beyond the row length."""
    if window is None or n_windowed_layers == 0 or window < row_tokens:
        return
    raise ValueError(f"model.rosa.window={window} is not shorter than the {row_tokens}-token rows of the data "
                     f"(data.seq_len): every windowed layer would see the whole row, so training never exercises "
                     f"the window. Use model.rosa.window below {row_tokens}, longer rows, or model.rosa.window=null "
                     f"for full attention")
