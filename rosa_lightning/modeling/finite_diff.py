"""Finite-difference check of the counterfactual gradient of one ROSA layer (docs/gradients.md §5).

The forward of a ROSA branch depends on its Q, K and V logits only through their signs, so the exact effect of one
bit is a loss difference: force ``bit^X[b, t, c]`` to 1 and to 0 in the forward and subtract,

    fd = L(bit = 1) - L(bit = 0).

The counterfactual backward claims ``dL/dz^X[b, t, c] ≈ σ'(z) · fd``, so its estimate of ``fd`` is

    est = (dL/dz^X[b, t, c]) / σ'(z^X[b, t, c]).

``gradient_check`` samples single bits where the estimate is meant to hold and returns, per stream, both values
(``StreamProbes``); how well they agree (Pearson correlation, sign agreement, coverage, ...) is scored outside the
library, by ``experiments/harness/statistics.py``. The probed bits:

- Q: bit j of a route's symbol at a Q-run start u_i (where the counterfactuals are taken, docs/retrieval.md §6);
- K: bit j at a K-run start s_l (the only times that receive K credit);
- V: bit m at a destination time (a time some position retrieves; V elsewhere has no effect).

A bit is forced through a forward hook on the branch's projection module that overwrites one logit by ±1 (the
forward reads signs only, so nothing else changes); the bit's current value reuses the unforced loss. The estimate
is what the branch's backward computes (``counterfactual_logit_grads`` with the branch's ``grad_options``), see
``logit_grads``. The loss is the scalar ``loss_fn(model)``; no parameter ``.grad`` is touched. Each probe costs one
forward on the same batch.

The same forward also gives the *first-order* effect of the flip, ``lin = sum(dL/dinj * (inj_forced - inj))``
over every position of the layer's injection: what any estimate built from the change of the branch output can
reach at best. Pearson(fd, lin) is the ceiling set by the loss's non-linearity (and by the cascade through later
ROSA layers); Pearson(est, lin) isolates the error of the counterfactual itself (wrong destinations, missed
positions).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional

import numpy as np
import torch
from torch import nn

from rosa_lightning.retrieval import rosa_match

from .counterfactual import GradOptions, counterfactual_logit_grads
from .parameters import rosa_layers
from .symbols import pack_symbols, run_starts

STREAMS = ("q", "k", "v")


@dataclass
class StreamProbes:
    """Probes of one stream: ``fd`` and ``est`` float64 [n], probe coordinates int64 [n, 3] as (b, t, c)."""

    stream: str
    fd: np.ndarray
    est: np.ndarray
    where: np.ndarray
    first_order: Optional[np.ndarray] = None  # float64 [n]: dL/dinj . (inj_forced - inj), see module doc


@dataclass
class GradientCheck:
    """Result of ``gradient_check``: the unforced loss and one ``StreamProbes`` per probed stream."""

    loss: float
    streams: Dict[str, StreamProbes] = field(default_factory=dict)


def randomize_values(model: nn.Module, scale: float = 1.0, seed: int = 0) -> None:
    """Give every ROSA branch non-zero e0/e1 (N(0, scale²), seeded) so it injects something.

    At initialisation e0 = e1 = 0, so every counterfactual estimate and loss difference is exactly 0;
    the harness needs an active branch.
    """

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in rosa_layers(model):
            for p in (layer.rosa.e0, layer.rosa.e1):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


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
    """One forward + backward of a ROSA layer, enough to evaluate the counterfactual estimate of any option.

    ``z``: logits per stream [B, T, C] (detached); ``u``: branch input [B, T, C]; ``grad_y``: G = dL/dy [B, T, C];
    ``tau`` int32 [B, R, T] and ``cf`` int32 [B, R, NQ, M]: the retrieval of the logits' symbols; ``delta``: e1 - e0.
    """

    loss: float
    z: Dict[str, torch.Tensor]
    u: torch.Tensor
    grad_y: torch.Tensor
    tau: torch.Tensor
    cf: torch.Tensor
    delta: torch.Tensor
    bits: int
    e0: Optional[torch.Tensor] = None
    inj: Optional[torch.Tensor] = None  # the layer's injection site value (detached), see ``_injection_hook``
    grad_inj: Optional[torch.Tensor] = None  # dL/dinj [B, T, C]

    def grads(self, options: GradOptions) -> Dict[str, torch.Tensor]:
        """dL/dz per stream, fp32 [B, T, C], as the branch backward computes it with ``options``."""
        with torch.no_grad():
            g = counterfactual_logit_grads(self.z["q"], self.z["k"], self.z["v"], self.tau, self.cf, self.grad_y,
                                           self.delta, self.bits, options, e0=self.e0)
        return dict(zip(STREAMS, g))


def logit_grads(model: nn.Module, layer: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> LogitGrads:
    """Capture what the counterfactual backward of ``layer``'s ROSA branch reads, from one forward + backward.

    The fused branch Function never materialises dL/dz as an autograd tensor, so ``LogitGrads.grads`` recomputes it
    with the function the backward calls (``counterfactual_logit_grads``) from the captured logits, the retrieval
    of their symbols and G = dL/dy = Wout^T dL/dinj. dL/dinj is dL/dh of the residual sum ``h = (x + attn) + inj``
    (the input of ``post_attention_layernorm``) for ``injection="post_attn"``, dL/d(layer output) for ``"post_mlp"``,
    the branch output for ``"pre_attn"``.
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

    regs = [(m.register_forward_hook, keep(x)) for x, m in _projections(branch).items()]
    regs.append((branch.q_proj.register_forward_pre_hook, keep_u))
    regs.append(_injection_hook(layer, seen))
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
    return LogitGrads(loss=float(loss.detach()), z=z, u=seen["u"], grad_y=grad_y, tau=match.tau.to(dev),
                      cf=match.cf.to(dev), delta=(branch.e1 - branch.e0).detach(), bits=bits,
                      e0=branch.e0.detach(), inj=seen["inj"].detach(), grad_inj=g_inj.detach())


def _injection_hook(layer: nn.Module, store: Dict[str, torch.Tensor]):
    """A hook registration that puts the layer's injection site value into ``store["inj"]`` on every forward.

    ``post_attn``: the input of ``post_attention_layernorm``, h = (x + attn) + inj; the branch does not change
    the layer's attention, so a flip changes h exactly by the change of inj. ``post_mlp``: the layer's output,
    (x + attn + mlp) + inj, which a flip changes exactly by the change of inj. ``pre_attn``: the branch output.
    """
    if layer.rosa_config.injection == "post_attn":
        def keep_h(_mod, args):
            store["inj"] = args[0]
        return layer.post_attention_layernorm.register_forward_pre_hook, keep_h
    if layer.rosa_config.injection == "post_mlp":
        def keep_out(_mod, _inp, out):
            store["inj"] = out[0] if isinstance(out, tuple) else out
        return layer.register_forward_hook, keep_out

    def keep_inj(_mod, _inp, out):
        store["inj"] = out
    return layer.rosa.register_forward_hook, keep_inj


def sample_probes(lg: LogitGrads, num_probes: int, streams=STREAMS, seed: int = 0) -> Dict[str, np.ndarray]:
    """Per stream, up to ``num_probes`` distinct bits (b, t, c), int64 [n, 3], where the estimate is meant to hold.

    Q: Q-run starts; K: K-run starts; V: destination times. The bit within the route is drawn uniformly.
    """
    bad = [s for s in streams if s not in STREAMS]
    if bad:
        raise ValueError(f"streams must be a subset of {STREAMS}, got {bad}")
    bits = lg.bits
    q_sym, k_sym = (pack_symbols(lg.z[x], bits).transpose(1, 2).contiguous().cpu() for x in ("q", "k"))
    cands = {}
    for name, sym in (("q", q_sym), ("k", k_sym)):
        start, _ = run_starts(sym)
        b, r, t = torch.nonzero(start == torch.arange(sym.shape[-1]), as_tuple=True)
        cands[name] = torch.stack([b, t, r], 1).numpy()
    tau = lg.tau.long().cpu()
    dest = torch.zeros(tau.shape, dtype=torch.bool)
    dest.scatter_(2, tau.clamp(min=0), tau >= 0)
    b, r, t = torch.nonzero(dest, as_tuple=True)
    cands["v"] = torch.stack([b, t, r], 1).numpy()
    rng = np.random.default_rng(seed)
    out = {}
    for x in streams:
        c = cands[x]
        if len(c) == 0:
            out[x] = np.zeros((0, 3), dtype=np.int64)
            continue
        rows = rng.choice(len(c), size=num_probes, replace=len(c) < num_probes)
        bb, tt, rr = c[rows].T
        probes = np.unique(np.stack([bb, tt, rr * bits + rng.integers(0, bits, size=num_probes)], 1), axis=0)
        out[x] = probes[rng.permutation(len(probes))]
    return out


def finite_differences(model: nn.Module, layer: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor],
                       lg: LogitGrads, stream: str, probes: np.ndarray, first_order: bool = False):
    """float64 [n]: L(bit = 1) - L(bit = 0) for each probe (b, t, c) of ``stream``, one forward per probe.

    With ``first_order=True`` returns ``(fd, lin)``: ``lin`` is the first-order effect of the same flip,
    dL/dinj . (inj(bit = 1) - inj(bit = 0)), from the same forwards (see the module doc).
    """
    z = lg.z[stream]
    fd = np.zeros(len(probes))
    lin = np.zeros(len(probes))
    seen: Dict[str, torch.Tensor] = {}
    regs = (_injection_hook(layer, seen),) if first_order else ()
    if first_order:
        grad_inj, inj = lg.grad_inj.double(), lg.inj.double()
    for i, (b, t, c) in enumerate(probes.tolist()):
        cur = int(z[b, t, c] > 0)
        sign = 1.0 if cur == 0 else -1.0
        with torch.no_grad(), force_bit(layer, stream, b, t, c, 1 - cur), _hooks(*regs):
            flipped = float(loss_fn(model))
        fd[i] = sign * (flipped - lg.loss)
        if first_order:
            lin[i] = sign * float((grad_inj * (seen["inj"].double() - inj)).sum())
    return (fd, lin) if first_order else fd


def estimates(lg: LogitGrads, grads: Dict[str, torch.Tensor], stream: str, probes: np.ndarray) -> np.ndarray:
    """float64 [n]: the counterfactual estimate dL/dz / σ'(z) at each probe (0 where σ' underflows)."""
    if len(probes) == 0:
        return np.zeros(0)
    b, t, c = (torch.as_tensor(a) for a in probes.T)
    z = lg.z[stream].double().cpu()[b, t, c]
    g = grads[stream].double().cpu()[b, t, c]
    ds = torch.sigmoid(z) * (1 - torch.sigmoid(z))
    return torch.where(ds > 0, g / ds.clamp(min=1e-300), 0.0).numpy()


def gradient_check(model: nn.Module, layer: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor],
                   num_probes: int = 64, streams=STREAMS, seed: int = 0,
                   options: Optional[GradOptions] = None) -> GradientCheck:
    """Compare the counterfactual estimate with exact loss differences for single bits of one ROSA layer.

    Args:
        model: what ``loss_fn`` evaluates (forward only; no parameter or ``.grad`` is changed).
        layer: a ``RosaQwen3DecoderLayer`` of ``model`` (its ``rosa`` branch is probed).
        loss_fn: ``loss_fn(model) -> scalar tensor`` on a fixed batch; must be deterministic.
        num_probes: bits sampled per stream (duplicates removed, so possibly fewer).
        streams: subset of ("q", "k", "v").
        seed: seed of the probe sampler.
        options: gradient options of the estimate; None = the branch's own ``grad_options``.
    Returns:
        GradientCheck with per-stream fd/est/first-order arrays and the probes' coordinates.
    """
    probes_lg = logit_grads(model, layer, loss_fn)
    probes = sample_probes(probes_lg, num_probes, streams, seed)
    grads = probes_lg.grads(layer.rosa.grad_options if options is None else options)
    result = GradientCheck(loss=probes_lg.loss)
    for x in streams:
        fd, lin = finite_differences(model, layer, loss_fn, probes_lg, x, probes[x], first_order=True)
        est = estimates(probes_lg, grads, x, probes[x])
        result.streams[x] = StreamProbes(stream=x, fd=fd, est=est, where=probes[x], first_order=lin)
    return result
