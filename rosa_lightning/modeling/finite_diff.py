"""Finite-difference check of the counterfactual gradient of one ROSA layer (spec §5.3).

The forward of a ROSA branch depends on its Q, K and V logits only through their signs, so the exact effect of one
bit is a loss difference: force ``bit^X[b, t, c]`` to 1 and to 0 in the forward and subtract,

    fd = L(bit = 1) - L(bit = 0).

The counterfactual backward claims ``dL/dz^X[b, t, c] ≈ σ'(z) · fd``, so its estimate of ``fd`` is

    est = (dL/dz^X[b, t, c]) / σ'(z^X[b, t, c]).

``gradient_check`` samples single bits where the estimate is meant to hold and returns, per stream, both values and
their agreement (Pearson correlation and sign agreement):

- Q: bit j of a route's symbol at a Q-run start u_i (where the counterfactuals are taken, spec §3.6);
- K: bit j at a K-run start s_l (the only times that receive K credit);
- V: bit m at a destination time (a time some position retrieves; V elsewhere has no effect).

A bit is forced through forward hooks on the branch's projection modules that overwrite one logit by ±1 (the forward
reads signs only, so nothing else changes); the current value of the bit reuses the unforced loss. The loss is the
scalar ``loss_fn(model)``; its gradient is taken with ``torch.autograd.grad`` on the captured logits, so no parameter
``.grad`` is touched. All probes of one call run on the same batch, sequentially (one forward each).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn

from rosa_lightning.retrieval import rosa_match

from .symbols import pack_symbols, run_starts

STREAMS = ("q", "k", "v")


@dataclass
class StreamAgreement:
    """Probes of one stream: ``fd`` and ``est`` float64 [n], probe coordinates int64 [n, 3] as (b, t, c)."""

    stream: str
    fd: np.ndarray
    est: np.ndarray
    where: np.ndarray

    @property
    def informative(self) -> np.ndarray:
        """bool [n]: probes where the estimate or the loss difference is non-zero."""
        return (self.fd != 0) | (self.est != 0)

    @property
    def pearson(self) -> float:
        """Pearson correlation of est and fd over the informative probes (NaN with fewer than 3 or no variance)."""
        m = self.informative
        if m.sum() < 3 or np.std(self.fd[m]) == 0 or np.std(self.est[m]) == 0:
            return float("nan")
        return float(np.corrcoef(self.fd[m], self.est[m])[0, 1])

    @property
    def sign_agreement(self) -> float:
        """Fraction of informative probes where sign(est) == sign(fd) (an estimate of 0 for a change is a miss)."""
        m = self.informative
        if not m.any():
            return float("nan")
        return float(np.mean(np.sign(self.fd[m]) == np.sign(self.est[m])))

    def summary(self) -> Dict[str, float]:
        return {"n": int(len(self.fd)), "informative": int(self.informative.sum()),
                "pearson": self.pearson, "sign_agreement": self.sign_agreement}


@dataclass
class GradientCheck:
    """Result of ``gradient_check``: the unforced loss and one ``StreamAgreement`` per probed stream."""

    loss: float
    streams: Dict[str, StreamAgreement] = field(default_factory=dict)

    def summary(self) -> Dict[str, Dict[str, float]]:
        return {name: s.summary() for name, s in self.streams.items()}


def branch_projections(branch: nn.Module) -> Dict[str, nn.Module]:
    """The modules whose outputs are the Q, K and V logits [B, T, C] of a ROSA branch."""
    mods = {x: getattr(branch, f"{x}_proj", None) for x in STREAMS}
    missing = [x for x, m in mods.items() if m is None]
    if missing:
        raise TypeError(f"branch {type(branch).__name__} has no {', '.join(x + '_proj' for x in missing)}")
    return mods


@contextlib.contextmanager
def _capture(mods: Dict[str, nn.Module], store: Dict[str, torch.Tensor]) -> Iterator[None]:
    def make(name):
        def hook(_mod, _inp, out):
            store[name] = out
        return hook
    handles = [m.register_forward_hook(make(x)) for x, m in mods.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def force_bit(module: nn.Module, b: int, t: int, c: int, value: int) -> Iterator[None]:
    """Within the block, the output logit [b, t, c] of ``module`` is +1 (value=1) or -1 (value=0)."""
    def hook(_mod, _inp, out):
        out = out.clone()
        out[b, t, c] = 1.0 if value else -1.0
        return out
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _candidates(z: Dict[str, torch.Tensor], bits: int) -> Dict[str, np.ndarray]:
    """Per stream, int64 [n, 3] (b, t, r): Q-run starts, K-run starts and destination times of every pair."""
    q_sym = pack_symbols(z["q"], bits).transpose(1, 2).contiguous()  # [B, R, T]
    k_sym = pack_symbols(z["k"], bits).transpose(1, 2).contiguous()
    out = {}
    for name, sym in (("q", q_sym), ("k", k_sym)):
        start, _ = run_starts(sym)
        is_start = start == torch.arange(sym.shape[-1])
        b, r, t = torch.nonzero(is_start, as_tuple=True)
        out[name] = torch.stack([b, t, r], 1).numpy()
    tau = rosa_match(q_sym.cpu(), k_sym.cpu(), bits, want_cf=False, layout="BRT").tau.long()
    dest = torch.zeros_like(tau, dtype=torch.bool)
    dest.scatter_(2, tau.clamp(min=0), tau >= 0)
    b, r, t = torch.nonzero(dest, as_tuple=True)
    out["v"] = torch.stack([b, t, r], 1).numpy()
    return out


def _sample(cands: np.ndarray, n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """n probes (b, t, c) drawn from candidate (b, t, r) rows with a uniform bit, without repeats where possible."""
    if len(cands) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    rows = rng.choice(len(cands), size=n, replace=len(cands) < n)
    b, t, r = cands[rows].T
    c = r * bits + rng.integers(0, bits, size=n)
    probes = np.unique(np.stack([b, t, c], 1), axis=0)
    return probes[rng.permutation(len(probes))]


def gradient_check(model: nn.Module, branch: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], bits: int,
                   num_probes: int = 64, streams=STREAMS, seed: int = 0) -> GradientCheck:
    """Compare the counterfactual estimate with exact loss differences for single bits of one ROSA branch.

    Args:
        model: the model ``loss_fn`` evaluates (forward only; parameters are not changed).
        branch: the ROSA branch of the layer under test; it must expose ``q_proj``, ``k_proj``, ``v_proj``
            modules whose outputs are the logits the forward thresholds.
        loss_fn: ``loss_fn(model) -> scalar tensor`` on a fixed batch; must be deterministic.
        bits: M, bits per route of the branch.
        num_probes: bits sampled per stream (duplicates removed).
        streams: subset of ("q", "k", "v").
        seed: seed of the probe sampler.
    Returns:
        GradientCheck with per-stream fd/est arrays and their Pearson and sign agreement.
    """
    bad = [s for s in streams if s not in STREAMS]
    if bad:
        raise ValueError(f"streams must be a subset of {STREAMS}, got {bad}")
    mods = branch_projections(branch)
    z: Dict[str, torch.Tensor] = {}
    with torch.enable_grad(), _capture(mods, z):
        loss = loss_fn(model)
    missing = [x for x in STREAMS if x not in z]
    if missing:
        raise RuntimeError(f"loss_fn did not run the branch's {missing} projections")
    grads = torch.autograd.grad(loss, [z[x] for x in streams], allow_unused=True)
    base = float(loss.detach())
    logits = {x: z[x].detach().double() for x in STREAMS}
    rng = np.random.default_rng(seed)
    cands = _candidates({x: z[x].detach() for x in STREAMS}, bits)

    result = GradientCheck(loss=base)
    for x, g in zip(streams, grads):
        zx = logits[x]
        g = torch.zeros_like(zx) if g is None else g.detach().double()
        probes = _sample(cands[x], num_probes, bits, rng)
        fd, est = np.zeros(len(probes)), np.zeros(len(probes))
        for i, (b, t, c) in enumerate(probes.tolist()):
            cur = int(zx[b, t, c] > 0)
            with torch.no_grad(), force_bit(mods[x], b, t, c, 1 - cur):
                flipped = float(loss_fn(model))
            fd[i] = (flipped - base) if cur == 0 else (base - flipped)
            s = torch.sigmoid(zx[b, t, c])
            ds = float(s * (1 - s))
            est[i] = float(g[b, t, c]) / ds if ds > 0 else 0.0
        result.streams[x] = StreamAgreement(stream=x, fd=fd, est=est, where=probes)
    return result
