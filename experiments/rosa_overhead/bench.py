"""How much does ROSA add to a windowed Qwen3 training step, and what does it save for backward?

1. Step time (forward + backward, labels = inputs) of windowed+ROSA vs windowed-only on a small
   Qwen3 on this machine's CPU, both models in one process with the same backbone weights,
   measured alternately; plus the overlap fraction of retrieval with attention.
2. Saved-for-backward bytes of one ROSA branch at Qwen3-1.7B shape (C=2048, M=4, T=16384, B=1,
   bf16), recorded with saved-tensor hooks on the real branch forward, vs the published layout.

Usage: python -m experiments.rosa_overhead.bench [--steps 5] [--seq 2048] [--window 256] [--skip-memory]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import Qwen3Config

from rosa_lightning.modeling import (RosaBranch, RosaConfig, attach_pipeline, build_rosa_model, rosa_layers,
                                     rosa_timing_stats)
from rosa_lightning.retrieval import RetrievalPipeline, kernel_threads

GIB = 1 << 30


def small_config(hidden: int, layers: int) -> Qwen3Config:
    return Qwen3Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=hidden // 4, intermediate_size=2 * hidden, vocab_size=4096,
                       max_position_embeddings=32768)


def step_time(model, ids, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        model(ids, labels=ids).loss.backward()
        times.append(time.perf_counter() - t0)
    return times


def bench_steps(args) -> dict:
    cfg = small_config(args.hidden, args.layers)
    torch.manual_seed(0)
    rosa = build_rosa_model(cfg, RosaConfig(window=args.window)).train()
    with torch.no_grad():  # non-zero values so the branch is not a no-op
        for layer in rosa_layers(rosa):
            layer.rosa.e0.normal_(0, 0.02)
            layer.rosa.e1.normal_(0, 0.02)
    base = build_rosa_model(cfg, RosaConfig(window=args.window, runtime={"enabled": False})).train()
    base.load_state_dict({k: v for k, v in rosa.state_dict().items() if "rosa" not in k}, strict=False)
    ids = torch.randint(0, cfg.vocab_size, (1, args.seq), generator=torch.Generator().manual_seed(1))
    with RetrievalPipeline(num_threads=args.kernel_threads) as pipe:
        attach_pipeline(rosa, pipe)
        step_time(rosa, ids, 1)  # warm-up
        step_time(base, ids, 1)
        rosa_timing_stats(rosa, reset=True)
        t_rosa, t_base = [], []
        for _ in range(args.steps):  # alternate, so machine noise hits both
            t_rosa += step_time(rosa, ids, 1)
            t_base += step_time(base, ids, 1)
        stats = rosa_timing_stats(rosa, reset=True)
        attach_pipeline(rosa, None)
    med_r, med_b = statistics.median(t_rosa), statistics.median(t_base)
    return {"shape": f"hidden {args.hidden}, {args.layers} layers ({len(rosa_layers(rosa))} ROSA), T={args.seq}, "
                     f"W={args.window}, B=1, fp32",
            "torch_threads": torch.get_num_threads(), "kernel_threads": args.kernel_threads,
            "step_s_windowed_rosa": med_r, "step_s_windowed": med_b, "step_time_ratio": med_r / med_b,
            "retrieval_s_per_step": stats["retrieval_cpu_s"] / args.steps,
            "wait_s_per_step": stats["wait_s"] / args.steps, "overlap_fraction": stats["overlap_fraction"]}


def published_saved_bytes(B: int, T: int, C: int, M: int, logit_bytes: int = 2) -> int:
    """Published layout (docs/gradients.md §1): cf table [B,R,T,M,2] int64, tau/q_run_id/k_run_start int64, zq/zk/zv."""
    R = C // M
    return B * R * T * M * 2 * 8 + 3 * B * R * T * 8 + 3 * B * T * C * logit_bytes


def bench_saved_bytes(T: int, C: int = 2048, M: int = 4, kernel_threads: int = 1) -> dict:
    """Record every tensor the ROSA branch saves for backward at the given shape (bf16)."""
    torch.manual_seed(0)
    branch = RosaBranch(C, M, dtype=torch.bfloat16)
    with torch.no_grad():
        branch.e0.normal_()
        branch.e1.normal_()
    u = torch.randn(1, T, C, dtype=torch.bfloat16, requires_grad=True)
    params = {p.data_ptr() for p in branch.parameters()}
    saved: dict[int, tuple[str, tuple, torch.dtype, int]] = {}

    def pack(t):
        if t.data_ptr() not in saved:
            saved[t.data_ptr()] = (_role(t, u, params), tuple(t.shape), t.dtype, t.numel() * t.element_size())
        return t

    with RetrievalPipeline(num_threads=kernel_threads) as pipe:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            t0 = time.perf_counter()
            inj = branch(u, 0, pipe)
            fwd_s = time.perf_counter() - t0
    extra = {k: v for k, v in saved.items() if v[0] == "rosa-only"}
    ours = sum(v[3] for v in extra.values())
    pub = published_saved_bytes(1, T, C, M)
    del inj
    return {"shape": f"C={C}, M={M}, R={C // M}, T={T}, B=1, bf16", "branch_forward_s": fwd_s,
            "saved_tensors": [{"role": r, "shape": s, "dtype": str(d), "MiB": b / (1 << 20)} for r, s, d, b in saved.values()],
            "saved_GiB_rosa_only": ours / GIB, "published_GiB": pub / GIB, "ratio": ours / pub}


def _role(t: torch.Tensor, u: torch.Tensor, params: set) -> str:
    if t.data_ptr() in params:
        return "parameter (no extra memory)"
    if t.data_ptr() == u.data_ptr():
        return "u (also saved by the attention projections)"
    return "rosa-only"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--kernel-threads", type=int, default=kernel_threads())
    ap.add_argument("--memory-seq", type=int, default=16384)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    result = {"steps": bench_steps(args)}
    print(json.dumps(result["steps"], indent=1), flush=True)
    if not args.skip_memory:
        result["saved_for_backward"] = bench_saved_bytes(args.memory_seq, kernel_threads=args.kernel_threads)
        print(json.dumps(result["saved_for_backward"], indent=1), flush=True)


if __name__ == "__main__":
    main()
