"""Finite-difference check of the counterfactual gradient of one ROSA layer (spec §5.3).

The forward of a ROSA branch depends on its Q, K and V logits only through their signs, so the exact effect of one
bit is a loss difference: force ``bit^X[b, t, c]`` to 1 and to 0 in the forward and subtract,

    fd = L(bit = 1) - L(bit = 0).

The counterfactual backward claims ``dL/dz^X[b, t, c] ≈ σ'(z) · fd``, so its estimate of ``fd`` is

    est = (dL/dz^X[b, t, c]) / σ'(z^X[b, t, c]).

``gradient_check`` samples single bits where the estimate is meant to hold and returns, per stream, both values and
their agreement (Pearson correlation over the probes where either is non-zero, sign agreement where both are, and
coverage: the fraction of loss-changing bits the estimate sees at all):

- Q: bit j of a route's symbol at a Q-run start u_i (where the counterfactuals are taken, spec §3.6);
- K: bit j at a K-run start s_l (the only times that receive K credit);
- V: bit m at a destination time (a time some position retrieves; V elsewhere has no effect).

A bit is forced through a forward hook on the branch's projection module that overwrites one logit by ±1 (the
forward reads signs only, so nothing else changes); the bit's current value reuses the unforced loss. The estimate
is what the branch's backward computes (``counterfactual_logit_grads`` with the branch's ``grad_options``), see
``logit_grads``. The loss is the scalar ``loss_fn(model)``; no parameter ``.grad`` is touched. Each probe costs one
forward on the same batch.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator

import numpy as np
import torch
from torch import nn

from rosa_lightning.retrieval import rosa_match

from .counterfactual import counterfactual_logit_grads
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
        """Fraction of probes with both values non-zero where sign(est) == sign(fd)."""
        m = (self.fd != 0) & (self.est != 0)
        return float(np.mean(np.sign(self.fd[m]) == np.sign(self.est[m]))) if m.any() else float("nan")

    @property
    def coverage(self) -> float:
        """Fraction of probes that change the loss (fd != 0) for which the estimate is non-zero."""
        m = self.fd != 0
        return float(np.mean(self.est[m] != 0)) if m.any() else float("nan")

    def summary(self) -> Dict[str, float]:
        return {"n": int(len(self.fd)), "informative": int(self.informative.sum()), "pearson": self.pearson,
                "sign_agreement": self.sign_agreement, "coverage": self.coverage}


@dataclass
class GradientCheck:
    """Result of ``gradient_check``: the unforced loss and one ``StreamAgreement`` per probed stream."""

    loss: float
    streams: Dict[str, StreamAgreement] = field(default_factory=dict)

    def summary(self) -> Dict[str, Dict[str, float]]:
        return {name: s.summary() for name, s in self.streams.items()}


def _projections(branch: nn.Module) -> Dict[str, nn.Module]:
    return {x: getattr(branch, f"{x}_proj") for x in STREAMS}


@contextlib.contextmanager
def _hooks(*registrations) -> Iterator[None]:
    handles = [register(fn) for register, fn in registrations]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def force_bit(layer: nn.Module, stream: str, b: int, t: int, c: int, value: int) -> Iterator[None]:
    """Within the block, ``bit^stream[b, t, c]`` of ``layer``'s ROSA branch is forced to ``value`` (0 or 1).

    The projection's output logit is overwritten by +1 or -1; the forward reads only its sign.
    """
    if stream not in STREAMS or value not in (0, 1):
        raise ValueError(f"force_bit: stream must be one of {STREAMS} and value 0 or 1, got {stream!r}, {value!r}")

    def hook(_mod, _inp, out):
        out = out.clone()
        out[b, t, c] = 1.0 if value else -1.0
        return out

    with _hooks((_projections(layer.rosa)[stream].register_forward_hook, hook)):
        yield


@dataclass
class LogitGrads:
    """One forward + backward of a ROSA layer: logits ``z`` and estimates ``grad`` per stream, [B, T, C].

    ``grad[x]`` is dL/dz^x as the branch's counterfactual backward computes it (fp32); ``u`` is the branch input.
    """

    loss: float
    z: Dict[str, torch.Tensor]
    grad: Dict[str, torch.Tensor]
    u: torch.Tensor


def logit_grads(model: nn.Module, layer: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> LogitGrads:
    """The counterfactual dL/dz of ``layer``'s ROSA branch for the Q, K and V logits.

    The fused branch Function never materialises dL/dz as an autograd tensor, so it is recomputed here with
    the same function the backward calls (``counterfactual_logit_grads`` with the branch's ``grad_options``),
    from the captured logits, the retrieval of their symbols and G = dL/dy = Wout^T dL/dinj. dL/dinj is dL/dh
    of the residual sum ``h = (x + attn) + inj`` (the input of ``post_attention_layernorm``) for
    ``injection="post_attn"``, the branch output itself for ``"pre_attn"``.
    """
    branch = layer.rosa
    z: Dict[str, torch.Tensor] = {}
    seen: Dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_mod, _inp, out):
            z[name] = out.detach()
        return hook

    def keep_u(_mod, args):
        seen["u"] = args[0].detach()

    def keep_h(_mod, args):
        seen["inj"] = args[0]

    def keep_inj(_mod, _inp, out):
        seen["inj"] = out

    regs = [(m.register_forward_hook, keep(x)) for x, m in _projections(branch).items()]
    regs.append((branch.q_proj.register_forward_pre_hook, keep_u))
    if layer.rosa_runtime.config.injection == "post_attn":
        regs.append((layer.post_attention_layernorm.register_forward_pre_hook, keep_h))
    else:
        regs.append((branch.register_forward_hook, keep_inj))
    with torch.enable_grad(), _hooks(*regs):
        loss = loss_fn(model)
    if "inj" not in seen or len(z) != 3:
        raise RuntimeError("loss_fn did not run the ROSA branch of the given layer")
    (g_inj,) = torch.autograd.grad(loss, [seen["inj"]])
    bits = branch.bits
    with torch.no_grad():
        grad_y = g_inj @ branch.out_proj.weight.to(g_inj.dtype)
        q_sym, k_sym = (pack_symbols(z[x], bits).transpose(1, 2).contiguous().cpu() for x in ("q", "k"))
        match = rosa_match(q_sym, k_sym, bits, layout="BRT")
        dev = z["q"].device
        delta = (branch.e1 - branch.e0).detach()
        gq, gk, gv = counterfactual_logit_grads(z["q"], z["k"], z["v"], match.tau.to(dev), match.cf.to(dev),
                                                grad_y, delta, bits, branch.grad_options)
    return LogitGrads(loss=float(loss.detach()), z=z, grad={"q": gq, "k": gk, "v": gv}, u=seen["u"])


def _candidates(z: Dict[str, torch.Tensor], bits: int) -> Dict[str, np.ndarray]:
    """Per stream, int64 [n, 3] (b, t, r): Q-run starts, K-run starts, and destination times of every pair."""
    q_sym, k_sym = (pack_symbols(z[x], bits).transpose(1, 2).contiguous().cpu() for x in ("q", "k"))
    out = {}
    for name, sym in (("q", q_sym), ("k", k_sym)):
        start, _ = run_starts(sym)
        b, r, t = torch.nonzero(start == torch.arange(sym.shape[-1]), as_tuple=True)
        out[name] = torch.stack([b, t, r], 1).numpy()
    tau = rosa_match(q_sym, k_sym, bits, want_cf=False, layout="BRT").tau.long()
    dest = torch.zeros(tau.shape, dtype=torch.bool)
    dest.scatter_(2, tau.clamp(min=0), tau >= 0)
    b, r, t = torch.nonzero(dest, as_tuple=True)
    out["v"] = torch.stack([b, t, r], 1).numpy()
    return out


def _sample(cands: np.ndarray, n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n distinct probes (b, t, c) from candidate rows (b, t, r), each with a uniformly drawn bit."""
    if len(cands) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    rows = rng.choice(len(cands), size=n, replace=len(cands) < n)
    b, t, r = cands[rows].T
    c = r * bits + rng.integers(0, bits, size=n)
    probes = np.unique(np.stack([b, t, c], 1), axis=0)
    return probes[rng.permutation(len(probes))]


def gradient_check(model: nn.Module, layer: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor],
                   num_probes: int = 64, streams=STREAMS, seed: int = 0) -> GradientCheck:
    """Compare the counterfactual estimate with exact loss differences for single bits of one ROSA layer.

    Args:
        model: what ``loss_fn`` evaluates (forward only; no parameter or ``.grad`` is changed).
        layer: a ``RosaQwen3DecoderLayer`` of ``model`` (its ``rosa`` branch is probed).
        loss_fn: ``loss_fn(model) -> scalar tensor`` on a fixed batch; must be deterministic.
        num_probes: bits sampled per stream (duplicates removed, so possibly fewer).
        streams: subset of ("q", "k", "v").
        seed: seed of the probe sampler.
    Returns:
        GradientCheck with per-stream fd/est arrays, Pearson correlation and sign agreement.
    """
    bad = [s for s in streams if s not in STREAMS]
    if bad:
        raise ValueError(f"streams must be a subset of {STREAMS}, got {bad}")
    bits = layer.rosa.bits
    lg = logit_grads(model, layer, loss_fn)
    cands = _candidates(lg.z, bits)
    rng = np.random.default_rng(seed)
    result = GradientCheck(loss=lg.loss)
    for x in streams:
        zx, gx = lg.z[x].double().cpu(), lg.grad[x].double().cpu()
        probes = _sample(cands[x], num_probes, bits, rng)
        fd, est = np.zeros(len(probes)), np.zeros(len(probes))
        for i, (b, t, c) in enumerate(probes.tolist()):
            cur = int(zx[b, t, c] > 0)
            with torch.no_grad(), force_bit(layer, x, b, t, c, 1 - cur):
                flipped = float(loss_fn(model))
            fd[i] = (flipped - lg.loss) if cur == 0 else (lg.loss - flipped)
            s = torch.sigmoid(zx[b, t, c])
            ds = float(s * (1 - s))
            est[i] = float(gx[b, t, c]) / ds if ds > 0 else 0.0
        result.streams[x] = StreamAgreement(stream=x, fd=fd, est=est, where=probes)
    return result
