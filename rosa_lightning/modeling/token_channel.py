"""Token channel (docs/method.md §3): the next-token id retrieved from the raw ids, added to the embeddings.

emb'[b, t] = emb[b, t] + 1[y[b, t] >= 0] * W_tok E[y[b, t]]   ("shared": E = the model's table)
emb'[b, t] = emb[b, t] + 1[y[b, t] >= 0] * E_own[y[b, t]]     ("own": separate zero-init table)

Both are exactly zero at initialisation. With "shared", E follows the backbone's freezing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .branch import RosaLinear


class RosaTokenChannel(nn.Module):
    """Maps retrieved token ids int [B, T] (-1 = none) to an embedding addition [B, T, C]."""

    def __init__(self, hidden_size: int, vocab_size: int, mode: str, dtype=None, device=None) -> None:
        super().__init__()
        if mode not in ("shared", "own"):
            raise ValueError(f"token channel mode must be 'shared' or 'own', got {mode!r}")
        self.mode = mode
        if mode == "shared":
            self.proj = RosaLinear(hidden_size, "zeros", dtype, device)
        else:
            # Zero table added directly: a zero projection on top would never receive gradient.
            self.embed = nn.Parameter(torch.zeros(vocab_size, hidden_size, dtype=dtype, device=device))

    def reset_parameters(self) -> None:
        if self.mode == "own":
            with torch.no_grad():
                self.embed.zero_()

    def forward(self, token_ids: torch.Tensor, shared_table: nn.Embedding) -> torch.Tensor:
        if token_ids.dim() != 2:
            raise ValueError(f"rosa_token_ids must be int [B, T] with -1 for none, got shape {tuple(token_ids.shape)}")
        valid = (token_ids >= 0).unsqueeze(-1)
        idx = token_ids.long().clamp(min=0)
        if self.mode == "shared":
            add = self.proj(shared_table(idx))
        else:
            add = F.embedding(idx, self.embed)
        return add * valid.to(add.dtype)
