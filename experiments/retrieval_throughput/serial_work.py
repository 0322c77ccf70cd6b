"""Serial work around the kernel per layer call at the production shape: the pipeline's retrieval before and after
``match_narrow``.

    python -m experiments.retrieval_throughput.serial_work             # B = 1, T = 16384, R = C / bits, C = 2048
    python -m experiments.retrieval_throughput.serial_work --smoke     # seconds (the test runs this)

For each bits value, on uniform random symbols, one kernel thread, in one process, interleaved, best of the repeats:

- ``previous``: what the pipeline ran before (``rosa_match(layout="BRT")``: range checks with numpy min/max, the
  q gather into ``q_sym``, fresh int32 results, then the int32 -> int16 narrowing copies);
- ``match_narrow``: range checks inside the kernel's passes, no ``q_sym``, int16 results written by the kernel's
  threads, into reused buffers (as the pipeline's pinned buffers on CUDA) or fresh ones (the CPU path);
- ``kernel``: the scan alone (``match_into`` with warm arenas and reused outputs), the floor of both.

Serial work: the CPU time of the calling thread for the same call with the scan stubbed out (``scans_stubbed``:
what remains is everything but the scan; for fresh outputs the stub writes them once, so their first-touch page
faults stay in), best of the repeats. The whole call's CPU and wall times are printed beside it; with one kernel thread
the kernel runs in the calling thread. A difference of whole-call times cannot resolve a few ms on a shared
machine; the stubbed measurement can.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time

import numpy as np
import torch

from experiments.harness.report import markdown_table
from rosa_lightning.retrieval import _native, rosa_match
from rosa_lightning.retrieval.match import match_narrow


def previous_path(q, k, bits):
    m = rosa_match(q, k, bits, 1, want_cf=True, layout="BRT")
    return m.tau.to(torch.int16, copy=True), m.cf.to(torch.int16, copy=True)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) of one call; with one kernel thread the kernel runs in this
    thread, so its CPU time is the call's work whatever other processes do (page faults count as system time)."""
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w0, time.thread_time() - c0


def measure(bits: int, T: int, hidden: int, repeats: int) -> dict:
    R = hidden // bits
    rng = np.random.default_rng(bits)
    q = torch.from_numpy(rng.integers(0, 1 << bits, (1, R, T), dtype=np.uint8))
    k = torch.from_numpy(rng.integers(0, 1 << bits, (1, R, T), dtype=np.uint8))
    buffers: dict = {}

    def reuse(name, shape, dtype):
        n = int(np.prod(shape))
        if name not in buffers or buffers[name].numel() < n:
            buffers[name] = torch.empty(n, dtype=dtype)
        return buffers[name][:n].view(shape)

    tau, cf = match_narrow(q, k, bits, 1, alloc=reuse)  # warm: arenas and buffers exist from here on
    ref_tau, ref_cf = previous_path(q, k, bits)
    assert torch.equal(tau, ref_tau) and torch.equal(cf, ref_cf), "match_narrow differs from rosa_match"
    qa, ka, nq = q.numpy(), k.numpy(), cf.shape[2]
    tau_flat, cf_flat = tau.view(-1).numpy(), cf.view(-1).numpy()

    def kernel():
        _native.match_into(qa, ka, bits, tau_flat, cf_flat, nq, True, True, 1, int(_native.MODE_HYBRID))

    paths = {"kernel": kernel, "previous": lambda: previous_path(q, k, bits),
             "match_narrow, reused buffers": lambda: match_narrow(q, k, bits, 1, alloc=reuse),
             "match_narrow, fresh buffers": lambda: match_narrow(q, k, bits, 1)}
    wall = {name: float("inf") for name in paths}
    cpu = dict(wall)
    outside = {name: float("inf") for name in paths if name != "kernel"}
    for _ in range(repeats):  # interleaved: each round measures every path once
        for name, fn in paths.items():
            w, c = timed(fn)
            wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)
        for name in outside:  # the same calls with the scan replaced by the first writes of fresh outputs
            with scans_stubbed(touch="fresh" in name or name == "previous"):
                outside[name] = min(outside[name], timed(paths[name])[1])
    by_threads = {}
    with scans_stubbed(touch=False):  # the pipeline's path, by kernel threads (the count pass is parallel)
        for threads in sorted({1, max(1, os.cpu_count() or 1)}):
            best = float("inf")
            for _ in range(4 * repeats):
                best = min(best, timed(lambda: match_narrow(q, k, bits, threads, alloc=reuse))[0])
            by_threads[threads] = best
    return {"bits": bits, "routes": R, "T": T, "wall": wall, "cpu": cpu, "outside": outside,
            "outside_by_threads": by_threads}


@contextlib.contextmanager
def scans_stubbed(touch: bool):
    """Replace both kernel scans by nothing, so a path's time is everything but the scan. ``touch``: the outputs are
    fresh allocations, whose first writes (page faults) the scan would pay for; the stub writes them once so that
    cost stays in (reused buffers: no page faults, and the writes themselves are the scan's)."""
    match, match_into = _native.match, _native.match_into

    def fake_match(q_sym, k, btr, bits, tau, cf, nq, want_cf, threads, mode):
        if touch:
            tau[...] = 0
            if want_cf:
                cf[...] = 0

    def fake_match_into(q, k, bits, tau, cf, nq, want_tau, want_cf, threads, mode):
        if touch and want_tau:
            tau.fill(0)
        if touch and want_cf:
            cf.fill(0)

    _native.match, _native.match_into = fake_match, fake_match_into
    try:
        yield
    finally:
        _native.match, _native.match_into = match, match_into


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048, help="C; routes R = C / bits (Qwen3-1.7B: 2048)")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="T = 512, C = 64, one repeat")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.smoke:
        args.T, args.hidden, args.repeats = 512, 64, 1
    rows, thread_rows = [], []
    for bits in args.bits:
        r = measure(bits, args.T, args.hidden, args.repeats)
        thread_rows += [[bits, r["routes"], n, t * 1e3] for n, t in r["outside_by_threads"].items()]
        for name in r["cpu"]:
            rows.append([bits, r["routes"], name, r["outside"].get(name, 0.0) * 1e3, r["cpu"][name] * 1e3,
                         r["wall"][name] * 1e3])
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}; B = 1, T = {args.T}, C = {args.hidden}, one kernel thread, uniform random, "
          f"best of {args.repeats}\n")
    print(markdown_table(["bits", "routes", "path", "CPU ms outside the scan", "CPU ms per call", "wall ms per call"],
                         rows, 2))
    print("\n`match_narrow` with reused buffers, wall ms outside the scan by kernel threads (best of the repeats):\n")
    print(markdown_table(["bits", "routes", "kernel threads", "wall ms outside the scan"], thread_rows, 2))


if __name__ == "__main__":
    main()
