"""Step-time model: does each ROSA layer's CPU retrieval hide behind the accelerator at production scale?

Measures the retrieval kernel on this machine (ns per (route, token), uniform random symbols, bits 4 and 8, tau only
and with counterfactuals, 1 and 2 threads), then combines it with a FLOP model of the accelerator's work per layer
(Qwen3-0.6B and 1.7B, T = 16,384, window 2,048, batch 1, forward and backward) in an event simulation of one
training step: per ROSA layer the forward submits its retrieval after the branch's Q/K projections, overlaps the V
projection and attention (and the MLP with ``--injection post_mlp``), and waits for tau; with deferred counterfactuals the backward of each layer waits for a
second job, held back until the forward ends and then run last layer first (the pipeline's policy). Prints, per model, bits, deferral and CPU cores per accelerator: the step time of
window + ROSA against window alone and the time the accelerator waits for the CPU.

    python -m experiments.step_time_model.run                  # measure the kernel here (about a minute)
    python -m experiments.step_time_model.run --smoke          # seconds: tiny measurement, same tables
    python -m experiments.step_time_model.run --ns 4:38:56 --ns 8:60:140  # given ns per (route, token) instead
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from experiments.harness.report import markdown_table
from rosa_lightning.retrieval.match import match_narrow

HERE = Path(__file__).parent

# Shapes from the models' config.json (Qwen3-0.6B-Base and Qwen3-1.7B-Base).
MODELS = {
    "Qwen3-0.6B": dict(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072, vocab=151936),
    "Qwen3-1.7B": dict(hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=6144, vocab=151936),
}
# Accelerator: H100 SXM dense bf16 peak, and the fraction of it a training step reaches. The figure the model uses
# is an assumption, stated in the README; replace it with measured per-layer times where a GPU is available.
PEAK_FLOPS = 989e12
UTILISATION = 0.5


@dataclass
class KernelCost:
    """Measured ns per (route, token) on one thread, and the 2-thread speed-up."""

    bits: int
    tau_ns: float       # tau only
    full_ns: float      # tau and counterfactuals
    speedup_2: float    # 1-thread time / 2-thread time (with counterfactuals)


def measure_kernel(bits: int, T: int, routes: int, repeats: int) -> KernelCost:
    """Best-of-``repeats`` time of the pipeline's retrieval entry (``match_narrow``: cached arenas, int16 results)
    on uniform random symbols [1, routes, T] (BRT layout)."""
    rng = np.random.default_rng(bits)
    A = 1 << bits
    q = torch.from_numpy(rng.integers(0, A, (1, routes, T), dtype=np.uint8))
    k = torch.from_numpy(rng.integers(0, A, (1, routes, T), dtype=np.uint8))

    def best(threads: int, want_cf: bool, clock) -> float:
        match_narrow(q, k, bits, threads, want_cf=want_cf)  # warm-up: threads, arenas, page faults
        out = float("inf")
        for _ in range(repeats):
            t0 = clock()
            match_narrow(q, k, bits, threads, want_cf=want_cf)
            out = min(out, clock() - t0)
        return out

    per = 1e9 / (routes * T)
    # one thread: the calling thread's CPU time (the kernel runs a one-thread call on it), which other jobs on a
    # shared machine do not inflate the way they do wall time, and which idle OpenMP workers spinning after an
    # earlier multi-thread call do not reach; the 2-thread speed-up needs wall time (printed, not used by the model)
    tau, full = best(1, False, time.thread_time) * per, best(1, True, time.thread_time) * per
    if (os.cpu_count() or 1) >= 2:
        speedup = best(1, True, time.perf_counter) / best(2, True, time.perf_counter)
    else:
        speedup = 1.0
    return KernelCost(bits, tau, full, speedup)


@dataclass
class LayerTimes:
    """Accelerator seconds of one decoder layer (forward split around the retrieval; backward)."""

    pre: float      # input norm and the branch's Q/K projections: before the retrieval is submitted
    window: float   # what the retrieval overlaps: the branch's V projection, attention (and the MLP for post_mlp)
    post: float     # after the readout: the branch's output projection (and the MLP for post_attn)
    backward: float
    plain: float    # the same layer without ROSA (forward + backward)


INJECTIONS = ("post_attn", "post_mlp")


def layer_times(model: dict, T: int, window: int, rosa: bool, injection: str = "post_attn",
                k_from_q: bool = False) -> LayerTimes:
    """FLOP model: 2 FLOPs per multiply-add, backward = 2x forward, ROSA backward recomputes its logits.

    ``injection``: where the branch output joins the residual stream (``RosaConfig.injection``): ``post_attn``
    (published) after attention, so the retrieval overlaps the V projection and attention; ``post_mlp`` after the
    MLP, so it overlaps the whole layer. ``k_from_q``: K's logits are Q's of the previous position
    (``kv_shift`` + ``qk_tied``, the recommended inputs; ``RosaBranch``): no K projection, so the branch runs three
    C x C projections forward instead of four and recomputes two logits in the backward instead of three."""
    if injection not in INJECTIONS:
        raise ValueError(f"injection must be one of {INJECTIONS}, got {injection!r}")
    C, H, KV, d, I = (model[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "intermediate"))
    rate = PEAK_FLOPS * UTILISATION
    attn_proj = 2 * T * C * (H * d + 2 * KV * d + H * d)
    keys = T * window - window * (window - 1) / 2  # causal window: min(t + 1, W) keys per query
    attn_core = 4 * H * d * keys
    mlp = 2 * T * 3 * C * I
    plain_fwd = attn_proj + attn_core + mlp
    branch_qk, branch_v, branch_out = (1 if k_from_q else 2) * 2 * T * C * C, 2 * T * C * C, 2 * T * C * C
    branch_bwd = (2 * (branch_qk + branch_v + branch_out) + branch_qk + branch_v) if rosa else 0.0
    late_mlp = mlp if injection == "post_mlp" else 0.0
    return LayerTimes(pre=branch_qk / rate, window=(branch_v + attn_proj + attn_core + late_mlp) / rate,
                      post=(branch_out + mlp - late_mlp) / rate, backward=(2 * plain_fwd + branch_bwd) / rate,
                      plain=3 * plain_fwd / rate)


class _Cpu:
    """The retrieval worker: non-preemptive, critical jobs before deferred ones, then in submission order."""

    def __init__(self) -> None:
        self.free_at = 0.0
        self.queue: list = []
        self.done: dict[str, float] = {}
        self._order = itertools.count()

    def submit(self, at: float, name: str, seconds: float, priority: int, order: Optional[int] = None) -> None:
        heapq.heappush(self.queue, (priority, next(self._order) if order is None else order, at, name, seconds))

    def finish(self, name: str) -> float:
        """Run jobs until ``name`` is done (every job it could wait for is already submitted); its end time."""
        while name not in self.done:
            ready = [j for j in self.queue if j[2] <= self.free_at]
            job = min(ready) if ready else min(self.queue, key=lambda j: (j[2], j[0], j[1]))
            self.queue.remove(job)
            heapq.heapify(self.queue)
            start = max(self.free_at, job[2])
            self.free_at = start + job[4]
            self.done[job[3]] = self.free_at
        return self.done[name]


def simulate_step(model: dict, kernel: KernelCost, cores: int, bits: int, defer: bool, T: int, window: int,
                  efficiency: float, injection: str = "post_attn", microbatches: int = 1,
                  k_from_q: bool = False) -> dict:
    """One training step of ``microbatches`` sequences: accelerator seconds with ROSA, without, and the time spent
    waiting for the CPU.

    ``microbatches`` > 1 interleaves them per layer (docs/pipeline.md, "What can overlap"; not built in the
    pipeline): every micro-batch's branch projections run and submit their retrieval, then each micro-batch's
    V projection and attention (and MLP with ``post_mlp``), waits for its own τ and finishes the layer, so one
    micro-batch's retrieval also overlaps the others' accelerator work. The window-only step runs the same
    sequences. ``k_from_q``: see ``layer_times``."""
    if microbatches < 1:
        raise ValueError(f"microbatches must be at least 1, got {microbatches}")
    L, M = model["layers"], microbatches
    routes = model["hidden"] // bits
    speed = cores * efficiency  # the kernel parallelises over pairs
    t_tau = routes * T * kernel.tau_ns * 1e-9 / speed
    t_full = routes * T * kernel.full_ns * 1e-9 / speed
    rosa_t = layer_times(model, T, window, rosa=True, injection=injection, k_from_q=k_from_q)
    plain_t = layer_times(model, T, window, rosa=False)
    cpu, gpu, forward_wait, backward_wait = _Cpu(), 0.0, 0.0, 0.0
    for layer in range(L):
        if layer == 0:  # layer 0 keeps global attention and no branch (the published layout)
            gpu += M * layer_times(model, T, T, rosa=False).plain / 3
            continue
        for m in range(M):
            gpu += rosa_t.pre
            cpu.submit(gpu, f"tau{layer}.{m}", t_tau if defer else t_full, 0)
        for m in range(M):
            ready = cpu.finish(f"tau{layer}.{m}")
            forward_wait += max(0.0, ready - (gpu + rosa_t.window))
            gpu = max(gpu + rosa_t.window, ready) + rosa_t.post
    if defer:  # held back until the forward ends, then the last layer's first (the pipeline's policy)
        for layer in range(1, L):
            for m in range(M):
                cpu.submit(gpu, f"cf{layer}.{m}", t_full, 1, order=-layer * M + m)
    head = 2 * model["hidden"] * model["vocab"] * T / (PEAK_FLOPS * UTILISATION)  # lm_head forward (and loss)
    gpu += M * (head + 2 * head)  # its forward and backward run before the last decoder layer's backward
    for layer in reversed(range(L)):
        for m in range(M):
            if layer == 0:
                gpu += 2 * layer_times(model, T, T, rosa=False).plain / 3
                continue
            if defer:
                ready = cpu.finish(f"cf{layer}.{m}")
                backward_wait += max(0.0, ready - gpu)
                gpu = max(gpu, ready)
            gpu += rosa_t.backward
    window_only = M * (layer_times(model, T, T, rosa=False).plain + (L - 1) * plain_t.plain + 3 * head)
    no_wait = gpu - forward_wait - backward_wait
    return {"step_s": gpu, "window_s": window_only, "ratio": gpu / window_only, "matmul_ratio": no_wait / window_only,
            "forward_wait_s": forward_wait, "backward_wait_s": backward_wait,
            "tau_ms": t_tau * 1e3 if defer else t_full * 1e3, "overlap_ms": rosa_t.window * 1e3}


def cores_to_hide(model, kernel, bits, defer, T, window, efficiency, slack=0.01, injection="post_attn",
                  microbatches: int = 1, k_from_q: bool = False) -> Optional[int]:
    """The fewest cores per accelerator for which waiting adds at most ``slack`` to the step (None: over 512)."""
    for cores in range(1, 513):
        r = simulate_step(model, kernel, cores, bits, defer, T, window, efficiency, injection, microbatches,
                          k_from_q)
        if r["ratio"] <= r["matmul_ratio"] * (1 + slack):
            return cores
    return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--routes", type=int, default=16, help="routes measured per kernel call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cores", type=int, nargs="+", default=[8, 12, 14, 16, 24, 32, 64])
    ap.add_argument("--efficiency", type=float, default=0.9,
                    help="parallel efficiency per core of the kernel over pairs (an assumption: the 2-thread speed-up "
                         "measured on a shared 2-core machine is printed but not used)")
    ap.add_argument("--ns", action="append", default=[], metavar="BITS:TAU:FULL",
                    help="use these ns per (route, token) instead of measuring (2-thread speed-up taken as 2)")
    ap.add_argument("--injection", nargs="+", default=list(INJECTIONS), choices=INJECTIONS,
                    help="where the branch output joins the residual stream (model.rosa.injection)")
    ap.add_argument("--microbatches", type=int, nargs="+", default=[1],
                    help="micro-batches interleaved per layer (modelled only, not built in the pipeline); more than "
                         "one value adds a column")
    ap.add_argument("--k-projection", choices=("by-bits", "own"), default="by-bits",
                    help="by-bits: bits 4 rows are the published branch (its own K projection), bits 8 rows the "
                         "recommended one, whose K is Q of the previous position (no K projection); own: every row "
                         "runs a K projection (the model of the branch before it took K from Q)")
    ap.add_argument("--smoke", action="store_true", help="tiny measurement (T = 2048, 2 routes, 1 repeat)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where the tables go (default: results/, whose results.md is the README's measured table; "
                         "results/given_ns/ when --ns gives every kernel figure, so a modelled run leaves it alone)")
    args = ap.parse_args(argv)
    if min(args.microbatches) < 1:  # before the kernel is measured
        raise SystemExit(f"--microbatches must be at least 1, got {args.microbatches}")
    torch.set_num_threads(1)
    if args.smoke:
        args.routes, args.repeats = 2, 1
    kernels = {}
    for spec in args.ns:
        bits, tau, full = spec.split(":")
        kernels[int(bits)] = KernelCost(int(bits), float(tau), float(full), 2.0)
    measured = [bits for bits in (4, 8) if bits not in kernels]
    for bits in measured:
        kernels[bits] = measure_kernel(bits, 2048 if args.smoke else args.T, args.routes, args.repeats)
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
             f"{time.strftime('%Y-%m-%d')}; T = {args.T}, window = {args.window}, batch 1, accelerator "
             f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s x {UTILISATION} utilisation (FLOP model); kernel parallel efficiency "
             f"{args.efficiency} per core.\n",
             "## Kernel on this machine (uniform random, CPU ns per (route, token), best of the repeats)\n",
             markdown_table(["bits", "tau only, 1 thread", "tau + cf, 1 thread", "2-thread speed-up"],
                            [[k.bits, k.tau_ns, k.full_ns, k.speedup_2] for k in kernels.values()], 2)]
    mb_col = len(args.microbatches) > 1
    rows, hide = [], []
    for injection, (name, model), mb in itertools.product(args.injection, MODELS.items(), args.microbatches):
        head = [name, injection, *([mb] if mb_col else [])]
        for bits, kernel in kernels.items():
            eff = args.efficiency
            k_from_q = args.k_projection == "by-bits" and bits == 8
            k_col = "from Q" if k_from_q else "own"
            for defer in (False, True):
                for cores in args.cores:
                    r = simulate_step(model, kernel, cores, bits, defer, args.T, args.window, eff, injection, mb,
                                      k_from_q)
                    rows.append([*head, bits, k_col, "deferred" if defer else "with tau", cores, r["tau_ms"],
                                 r["overlap_ms"], r["forward_wait_s"], r["backward_wait_s"], r["matmul_ratio"],
                                 r["ratio"]])
                hide.append([*head, bits, k_col, "deferred" if defer else "with tau",
                             cores_to_hide(model, kernel, bits, defer, args.T, args.window, eff,
                                           injection=injection, microbatches=mb, k_from_q=k_from_q)])
    mb_head = ["micro-batches"] if mb_col else []
    lines += ["## One training step, window + ROSA vs window\n",
              "`critical job`: CPU ms per ROSA layer the forward waits for; `overlap`: accelerator ms it can hide "
              "behind; waits are accelerator seconds per step spent waiting for the CPU; `matmuls only`: the "
              "ratio if retrieval were free (the branch's own projections); `K`: the branch's K projection "
              "(`own`) or Q's logits of the previous position (`from Q`, the recommended inputs).\n",
              markdown_table(["model", "injection", *mb_head, "bits", "K", "counterfactuals", "cores/GPU",
                              "critical job (ms)",
                              "overlap (ms)",
                              "forward wait (s)", "backward wait (s)", "matmuls only", "window+ROSA / window"],
                             rows, 3),
              "## Cores per accelerator to hide retrieval (within 1% of the matmul-only step)\n",
              markdown_table(["model", "injection", *mb_head, "bits", "K", "counterfactuals", "cores"], hide)]
    text = "\n".join(lines)
    print(text)
    out = args.out if args.out is not None else HERE / "results" / ("" if measured else "given_ns")
    out.mkdir(parents=True, exist_ok=True)
    (out / ("smoke.md" if args.smoke else "results.md")).write_text(text)
    (out / ("smoke.json" if args.smoke else "results.json")).write_text(json.dumps(
        {"kernels": [asdict(k) for k in kernels.values()], "steps": rows, "cores_to_hide": hide}, indent=1))


if __name__ == "__main__":
    main()
