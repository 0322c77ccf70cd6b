"""The ROSA retrieval branch of one decoder layer (docs/method.md §2.2-§2.5).

Parameters (keys under ``model.layers.{i}.rosa``): ``q_proj/k_proj/v_proj/out_proj.weight`` [C, C]
and ``e0``, ``e1`` [C]. Xavier-uniform Q/K/V, identity out_proj, zero e0/e1: the branch output
is exactly 0 at initialisation.

Retrieval goes through the seam (``rosa_lightning.retrieval.seam``): ``launch`` computes the Q/K symbols and
``submit``s them to the layer's retriever (the batch pipeline in training and full forwards, the streaming
generation state in ``generate``), then computes the V symbols while retrieval runs; ``finish`` takes the
``LayerRetrieval`` and reads out from the V symbol at tau (bit m = channel r*M+m).
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from rosa_lightning.retrieval.seam import PendingResult, Retriever

from .branch_function import BranchSpec, RosaBranchFunction
from .branch_inputs import InputOptions, branch_inputs, shift_previous
from .counterfactual import GradOptions
from .symbols import pack_symbols


_DEFER_INIT = contextvars.ContextVar("rosa_defer_init", default=False)


@contextlib.contextmanager
def deferred_init() -> Iterator[None]:
    """ROSA modules built inside allocate their parameters without initialising them (no random numbers drawn);
    the model initialises them afterwards in a fixed order (``RosaQwen3ForCausalLM``), so the initial weights
    for a seed do not depend on where in the model's construction the branches are built."""
    token = _DEFER_INIT.set(True)
    try:
        yield
    finally:
        _DEFER_INIT.reset(token)


def init_deferred() -> bool:
    """Whether ROSA modules are being built under ``deferred_init``."""
    return _DEFER_INIT.get()


class RosaLinear(nn.Module):
    """A bias-free [out, in] projection with its own init rule ("xavier" or "identity").

    Not an ``nn.Linear`` on purpose: HF's generic ``_init_weights`` re-initialises every
    ``nn.Linear`` with a normal distribution, which would break the identity/Xavier init.
    """

    def __init__(self, features: int, init: str, dtype=None, device=None) -> None:
        super().__init__()
        if init not in ("xavier", "identity", "zeros"):
            raise ValueError(f"RosaLinear init must be 'xavier', 'identity' or 'zeros', got {init!r}")
        self.init = init
        self.weight = nn.Parameter(torch.empty(features, features, dtype=dtype, device=device))
        if not init_deferred():
            self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "xavier":
                nn.init.xavier_uniform_(self.weight, gain=1.0)
            elif self.init == "identity":
                self.weight.copy_(torch.eye(self.weight.shape[0], dtype=self.weight.dtype))
            else:
                self.weight.zero_()

    def forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x @ weight^T; ``weight`` None = this module's own weight (another one: a tied projection)."""
        return F.linear(x, self.weight if weight is None else weight)


@dataclass
class RosaTiming:
    """Accumulated per-layer timing: retrieval seconds (in the worker), main-thread wait seconds."""

    retrieval_s: float = 0.0
    wait_s: float = 0.0
    calls: int = 0
    backward_wait_s: float = 0.0  # backward blocked on deferred counterfactuals
    deferred_s: float = 0.0       # kernel seconds of the deferred counterfactual jobs

    def add(self, retrieval_s: float, wait_s: float) -> None:
        self.retrieval_s += retrieval_s
        self.wait_s += wait_s
        self.calls += 1

    def add_backward_wait(self, wait_s: float, deferred_s: float) -> None:
        self.backward_wait_s += wait_s
        self.deferred_s += deferred_s

    def reset(self) -> None:
        self.retrieval_s, self.wait_s, self.calls = 0.0, 0.0, 0
        self.backward_wait_s, self.deferred_s = 0.0, 0.0


@dataclass
class PendingRetrieval:
    """State between ``RosaBranch.launch`` and ``RosaBranch.finish``."""

    u: torch.Tensor  # input of the Q projection
    u_kv: Optional[torch.Tensor]  # input of K/V when it differs from u (input options), else None
    v_sym: torch.Tensor  # uint8 [B, T, R]
    logit_dtype: torch.dtype
    job: PendingResult
    k_shifted_q: bool = False  # K's symbols were Q's of the previous position (``RosaBranch.shift_k_from_q``)


class RosaBranch(nn.Module):
    """Parallel retrieval branch: u [B, T, C] -> injection [B, T, C] (docs/method.md §2.4).

    ``grad_options`` and ``input_options`` are the model's ``RosaConfig.grad`` and ``.inputs``.

    Under ``kv_shift`` + ``qk_tied`` K's logits are Q's of the previous position (k[t] = u[t-1]·Wqᵀ = zq[t-1], and
    0 at t = 0), so the full forward takes K's symbols from Q's instead of running a second projection, and the
    backward recomputes one logit matmul less and merges K's gradient into Q's before its two matmuls
    (``_projection_grads``): four of the branch's fifteen C x C matmuls fewer per layer and step, and K's symbols
    equal Q's shifted by construction rather than by the matmul giving every row the same result.
    ``shift_k_from_q = False``
    (an instance attribute) runs the reference path, ``k_proj`` with Q's weight on the shifted input; it also runs
    while anything hooks ``k_proj`` (the finite-difference harness forces K bits there), and in streaming, where
    the first position of a chunk reads the previous chunk.
    """

    shift_k_from_q: bool = True

    def __init__(self, hidden_size: int, bits: int, grad_options: GradOptions = GradOptions(),
                 dtype=None, device=None, input_options: InputOptions = InputOptions()) -> None:
        super().__init__()
        if hidden_size % bits:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by bits={bits}")
        self.bits = bits
        self.grad_options = grad_options
        self.input_options = input_options
        self.q_proj = RosaLinear(hidden_size, "xavier", dtype, device)
        self.k_proj = RosaLinear(hidden_size, "xavier", dtype, device)
        self.v_proj = RosaLinear(hidden_size, "xavier", dtype, device)
        self.out_proj = RosaLinear(hidden_size, "identity", dtype, device)
        self.e0 = nn.Parameter(torch.zeros(hidden_size, dtype=dtype, device=device))
        self.e1 = nn.Parameter(torch.zeros(hidden_size, dtype=dtype, device=device))
        self.timing = RosaTiming()

    def reset_parameters(self) -> None:
        """Re-initialise e0/e1 (the projections reset themselves)."""
        with torch.no_grad():
            self.e0.zero_()
            self.e1.zero_()

    def _k_weight(self) -> Optional[torch.Tensor]:
        """The weight K is computed with: None = ``k_proj``'s own, Q's under ``qk_tied``."""
        return self.q_proj.weight if self.input_options.qk_tied else None

    def _k_is_shifted_q(self, retriever: Retriever) -> bool:
        """Whether this forward takes K's symbols from Q's of the previous position (see the class doc)."""
        io = self.input_options
        return (io.kv_shift and io.qk_tied and self.shift_k_from_q and not retriever.streaming
                and not self.k_proj._forward_hooks and not self.k_proj._forward_pre_hooks)

    def _needs_cf(self, u: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (
            u.requires_grad or any(p.requires_grad for p in (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)))

    def launch(self, u: torch.Tensor, layer_idx: int, retriever: Retriever, reuse: bool = False) -> PendingRetrieval:
        """Compute Q/K symbols, submit them to ``retriever``, then compute the V symbols while it runs.

        Args:
            u: the normalised layer input [B, T, C].
            layer_idx: the decoder layer's index (the retriever keeps per-layer state and buffers under it).
            retriever: the seam (``rosa_lightning.retrieval.seam.Retriever``).
            reuse: the layer runs under activation checkpointing and will be recomputed: the retriever keeps this
                result for the recompute (retrieval runs once per layer and step).
        """
        want_cf = self._needs_cf(u)  # decided outside no_grad
        u_q, u_kv = u, None
        if self.input_options != InputOptions():
            # Q reads u_q, K and V read u_kv (``branch_inputs``: shift, centring); streamed state lives in the
            # streaming retriever
            u_q, u_kv = branch_inputs(u, self.input_options, layer_idx, retriever if retriever.streaming else None)
        u_in = u_q if u_kv is None else u_kv
        shifted = self._k_is_shifted_q(retriever)
        with torch.no_grad():
            zq = self.q_proj(u_q)
            q_sym = pack_symbols(zq, self.bits)
            if shifted:
                # k[t] = zq[t-1]; position 0 reads a zero vector, whose logits are 0 and whose symbol is 0
                k_sym = shift_previous(q_sym)
            else:
                k_sym = pack_symbols(self.k_proj(u_in, self._k_weight()), self.bits)
            dtype = zq.dtype
            del zq
            job = retriever.submit(layer_idx, q_sym, k_sym, self.bits, want_cf, reuse)
            v_sym = pack_symbols(self.v_proj(u_in), self.bits)
        return PendingRetrieval(u=u_q, u_kv=u_kv, v_sym=v_sym, logit_dtype=dtype, job=job, k_shifted_q=shifted)

    def finish(self, pending: PendingRetrieval) -> torch.Tensor:
        """Wait for retrieval and return the injection y @ Wout^T [B, T, C]."""
        found = pending.job.result(pending.v_sym)
        self.timing.add(found.retrieval_s, found.wait_s)
        deferred = found.cf_deferred
        if deferred is not None and deferred.on_wait is None:
            deferred.on_wait = self.timing.add_backward_wait
        wk = self._k_weight()
        return RosaBranchFunction.apply(
            pending.u, pending.u_kv, self.q_proj.weight, self.k_proj.weight if wk is None else wk, self.v_proj.weight,
            self.e0, self.e1, self.out_proj.weight, found,
            BranchSpec(self.bits, self.grad_options, pending.logit_dtype, pending.k_shifted_q))

    def forward(self, u: torch.Tensor, layer_idx: int, retriever: Retriever, reuse: bool = False) -> torch.Tensor:
        """Launch and finish at once (no overlap); used by ``pre_attn`` and tests."""
        return self.finish(self.launch(u, layer_idx, retriever, reuse))
