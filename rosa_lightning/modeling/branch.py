"""The ROSA retrieval branch of one decoder layer (docs/method.md §2.2-§2.5).

Parameters (keys under ``model.layers.{i}.rosa``): ``q_proj/k_proj/v_proj/out_proj.weight`` [C, C]
and ``e0``, ``e1`` [C]. Xavier-uniform Q/K/V, identity out_proj, zero e0/e1: the branch output
is exactly 0 at initialisation.

Retrieval protocol. ``launch`` computes the Q/K symbols and starts retrieval, ``finish`` waits
and reads out. Two sources of retrieval results:

* the pipeline (training, full-sequence forward): ``rosa_match`` over the whole sequence, with
  counterfactuals when gradients are needed;
* a ``rosa_cache`` object (incremental generation): ``rosa_cache.retrieve(layer_idx, q_sym,
  k_sym, v_sym)`` gets uint8 [B, T_new, R] symbols of the new positions and returns
  ``(tau, v_at_tau)``: tau int32 [B, R, T_new] absolute times (-1 = none) and v_at_tau uint8
  [B, R, T_new], the V symbol stored for time tau (0 where none). No counterfactuals.

Both paths read out from the V symbol at tau (bit m = channel r*M+m).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .branch_function import RosaBranchFunction
from .branch_inputs import InputOptions, branch_inputs
from .counterfactual import GradOptions
from .symbols import gather_time, pack_symbols


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

    def add(self, retrieval_s: float, wait_s: float) -> None:
        self.retrieval_s += retrieval_s
        self.wait_s += wait_s
        self.calls += 1

    def reset(self) -> None:
        self.retrieval_s, self.wait_s, self.calls = 0.0, 0.0, 0


@dataclass
class PendingRetrieval:
    """State between ``RosaBranch.launch`` and ``RosaBranch.finish``."""

    u: torch.Tensor
    v_sym: torch.Tensor  # uint8 [B, T, R]
    logit_dtype: torch.dtype
    handle: Any = None  # pipeline handle, or None when the result is already known
    tau: Optional[torch.Tensor] = None
    v_at_tau: Optional[torch.Tensor] = None
    u_kv: Optional[torch.Tensor] = None  # input of K/V when it differs from u (input options)


class RosaBranch(nn.Module):
    """Parallel retrieval branch: u [B, T, C] -> injection [B, T, C] (docs/method.md §2.4)."""

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

    def _needs_cf(self, u: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (
            u.requires_grad or any(p.requires_grad for p in (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)))

    def launch(self, u: torch.Tensor, layer_idx: int, pipeline=None, rosa_cache=None) -> PendingRetrieval:
        """Compute Q/K symbols, start retrieval, then compute the V symbols while it runs.

        Args:
            u: the normalised layer input [B, T, C].
            pipeline: a ``RetrievalPipeline`` (used when ``rosa_cache`` is None).
            rosa_cache: generation state object (see module docstring), or None.
        """
        want_cf = self._needs_cf(u)  # decided outside no_grad
        u_q, u_kv = u, None
        if self.input_options != InputOptions():
            # Q reads u_q, K and V read u_kv (``branch_inputs``: shift, centring)
            u_q, u_kv = branch_inputs(u, self.input_options, layer_idx, rosa_cache)
        u_in = u_q if u_kv is None else u_kv
        with torch.no_grad():
            zq, zk = self.q_proj(u_q), self.k_proj(u_in, self._k_weight())
            q_sym, k_sym = pack_symbols(zq, self.bits), pack_symbols(zk, self.bits)
            dtype = zq.dtype
            del zq, zk
            handle = None
            if rosa_cache is None:
                handle = pipeline.submit(layer_idx, q_sym, k_sym, self.bits, want_cf=want_cf)
            v_sym = pack_symbols(self.v_proj(u_in), self.bits)
        pending = PendingRetrieval(u=u_q, v_sym=v_sym, logit_dtype=dtype, handle=handle, u_kv=u_kv)
        return self._attach_cached(pending, layer_idx, q_sym, k_sym, v_sym, rosa_cache)

    @staticmethod
    def _attach_cached(pending: PendingRetrieval, layer_idx: int, q_sym, k_sym, v_sym, rosa_cache) -> PendingRetrieval:
        if rosa_cache is not None:
            tau, v_at_tau = rosa_cache.retrieve(layer_idx, q_sym, k_sym, v_sym)
            pending.tau = tau.to(device=pending.u.device)
            pending.v_at_tau = v_at_tau.to(device=pending.u.device, dtype=torch.uint8)
        return pending

    def finish(self, pending: PendingRetrieval) -> torch.Tensor:
        """Wait for retrieval and return the injection y @ Wout^T [B, T, C]."""
        cf = None
        if pending.handle is not None:
            tau, cf, retrieval_s, wait_s = pending.handle.wait()
            self.timing.add(retrieval_s, wait_s)
            v_sym = pending.v_sym.transpose(1, 2)  # [B, R, T]
            v_at_tau = torch.where(tau >= 0, gather_time(v_sym, tau), 0).to(torch.uint8)
        else:
            tau, v_at_tau = pending.tau, pending.v_at_tau
        wk = self._k_weight()
        return RosaBranchFunction.apply(
            pending.u, self.q_proj.weight, self.k_proj.weight if wk is None else wk, self.v_proj.weight, self.e0,
            self.e1, self.out_proj.weight, tau, cf, v_at_tau, self.bits, self.grad_options, pending.logit_dtype,
            pending.u_kv)

    def forward(self, u: torch.Tensor, layer_idx: int = 0, pipeline=None, rosa_cache=None) -> torch.Tensor:
        """Launch and finish at once (no overlap); used by ``pre_attn`` and tests."""
        return self.finish(self.launch(u, layer_idx, pipeline, rosa_cache))
