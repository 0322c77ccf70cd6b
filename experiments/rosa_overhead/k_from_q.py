"""What does taking K from Q save in one ROSA branch's forward and backward (the recommended inputs)?

Under ``kv_shift`` + ``qk_tied`` the branch takes K's symbols from Q's of the previous position instead of running a
K projection, and merges K's logit gradient into Q's in the backward (docs/method.md §2.7). This times one branch's
forward + backward both ways on the same input and weights, the two paths interleaved round by round in one process
(CPU time of the calling thread, torch on one thread), with the retrieval computed once beforehand and handed to
both (the K symbols are the same, so it is the same retrieval), so that only the branch's own work is timed. Every
round checks that the two paths give the same output and gradients.

    python -m experiments.rosa_overhead.k_from_q                     # C = 1024, T = 2048, bits 8 (about a minute)
    python -m experiments.rosa_overhead.k_from_q --hidden 256 --T 256 --rounds 3   # seconds
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from rosa_lightning.modeling import RosaBranch
from rosa_lightning.modeling.branch_inputs import InputOptions
from rosa_lightning.retrieval import rosa_match
from rosa_lightning.retrieval.indices import values_at
from rosa_lightning.retrieval.seam import LayerRetrieval


class _Fixed:
    """A synchronous stand-in for the retrieval seam: the first submit computes the retrieval, every later one must
    bring the same symbols and gets the same result."""

    streaming = False

    def __init__(self) -> None:
        self.q = self.k = self.match = None

    def submit(self, layer_idx, q, k, bits, want_cf, reuse=False):
        if self.match is None:
            self.q, self.k = q.clone(), k.clone()
            self.match = rosa_match(q, k, bits, num_threads=1, want_cf=True)
        elif not (torch.equal(q, self.q) and torch.equal(k, self.k)):
            raise RuntimeError("the branch submitted other symbols than the first call's")
        m = self.match
        return type("Handle", (), {"result": lambda _self, v: LayerRetrieval(m.tau, values_at(v, m.tau), m.cf)})()


def _step(branch: RosaBranch, u: torch.Tensor, gout: torch.Tensor, seam: _Fixed, shifted: bool):
    branch.shift_k_from_q = shifted
    branch.zero_grad(set_to_none=True)
    x = u.detach().requires_grad_(True)
    t0 = time.thread_time()
    out = branch(x, 0, seam)
    (out * gout).sum().backward()
    dt = time.thread_time() - t0
    grads = [x.grad] + [p.grad for p in (branch.q_proj.weight, branch.v_proj.weight, branch.out_proj.weight,
                                         branch.e0, branch.e1)]
    return dt, out.detach(), grads


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    branch = RosaBranch(args.hidden, args.bits, input_options=InputOptions(kv_shift=True, qk_tied=True)).to(dtype)
    with torch.no_grad():
        branch.e0.normal_(0, 0.02)
        branch.e1.normal_(0, 0.02)
    u = torch.randn(1, args.T, args.hidden, dtype=dtype)
    u[:, args.T // 2:] = u[:, :args.T - args.T // 2]  # a repeated half: retrievals, and counterfactuals that move
    gout = torch.randn(1, args.T, args.hidden, dtype=dtype)
    seam = _Fixed()
    times = {True: [], False: []}
    _step(branch, u, gout, seam, True)  # warm-up (allocator, kernels); computes the retrieval
    _step(branch, u, gout, seam, False)
    for r in range(args.rounds):
        got = {}
        for shifted in ((True, False) if r % 2 == 0 else (False, True)):
            dt, out, grads = _step(branch, u, gout, seam, shifted)
            times[shifted].append(dt)
            got[shifted] = (out, grads)
        (o1, g1), (o2, g2) = got[True], got[False]
        if not torch.equal(o1, o2):
            raise AssertionError("the two paths' outputs differ")
        tol = dict(atol=1e-4, rtol=1e-3) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, **tol)
    fast, ref = (statistics.median(times[s]) * 1e3 for s in (True, False))
    fast_min, ref_min = (min(times[s]) * 1e3 for s in (True, False))
    print(f"one branch, C = {args.hidden}, T = {args.T}, bits {args.bits}, {args.dtype}, {args.rounds} rounds "
          f"(CPU ms of the calling thread, forward + backward, retrieval excluded)")
    print("| path | median ms | min ms |\n|---|---:|---:|")
    print(f"| K projection (reference) | {ref:.1f} | {ref_min:.1f} |")
    print(f"| K from Q | {fast:.1f} | {fast_min:.1f} |")
    print(f"| ratio | {fast / ref:.3f} | {fast_min / ref_min:.3f} |")
    return {"k_projection_ms": ref, "k_from_q_ms": fast, "ratio": fast / ref}


if __name__ == "__main__":
    main()
