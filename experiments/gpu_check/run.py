"""GPU check: does the CUDA retrieval pipeline give the CPU path's results, and what do global, window and
window + ROSA cost per training step at Qwen3-0.6B shape?

One command on a CUDA machine, from the repository root (builds the kernel in place, then about 7 minutes):

    python3 setup.py build_ext --inplace && python3 -m experiments.gpu_check.run

Sections (one printed markdown table; ``results/<card>.md`` and ``.json`` beside this script):

1. exactness: ``RetrievalPipeline`` on device tensors (pinned buffers, side streams, events) vs ``rosa_match`` on
   the CPU, deferred counterfactuals off and on; a small ROSA model on the device vs on the CPU in fp32 (logits,
   injection, every gradient), deferral off/on, activation checkpointing off/on;
2. a bf16 forward and backward: finite loss and gradients;
3. step time and peak memory of global / window / window + ROSA (random weights, T = 16384 falling back to shorter,
   batch 1, bf16, sdpa and flash_attention_2 where ``flash_attn`` imports), with overlap and waits per layer;
4. FSDP on one device (single-process group): gradients equal to the unwrapped model's, also under stage-A freezing.

A CPU rehearsal of every code path at tiny shapes: ``python -m experiments.gpu_check.run --device cpu --smoke``.
Only torch, transformers, numpy and this repository are imported (no Hydra, OmegaConf, W&B or datasets), so the
check runs on a bare GPU machine with the package built in place.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy
import torch
import transformers

from experiments.harness.report import markdown_table, write_json
from rosa_lightning.retrieval import cpu_budget, kernel_threads

from . import exactness, fsdp_check, step_time
from .common import QWEN3_0P6B, TINY, Budget, Row

RESULTS = Path(__file__).resolve().parent / "results"
HEADER = ["section", "check", "setting", "result", "value", "note"]
SMALL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, vocab_size=4096)
STEP_SMOKE = dict(TINY, num_hidden_layers=2, vocab_size=512)

# Shapes per mode: (B, T, R) of the pipeline cases, model lengths, the step-time shape and its lengths.
PLANS = {
    "full": dict(pipeline=[(1, 257, 16), (2, 2048, 64), (1, 16384, 256)], model_len=256, bf16=(SMALL, 2048),
                 step=(QWEN3_0P6B, [16384, 8192, 4096], 2048), warmup=2, steps=3, fsdp_len=128, reserve_s=45.0),
    "smoke": dict(pipeline=[(1, 64, 4), (2, 200, 8)], model_len=64, bf16=(TINY, 128),
                  step=(STEP_SMOKE, [256, 128], 64), warmup=1, steps=2, fsdp_len=64, reserve_s=5.0),
}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cuda (the check) or cpu (a rehearsal of its code paths, with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes everywhere (seconds)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="wall-clock seconds; measurements that would pass it are skipped and recorded as such")
    ap.add_argument("--threads", default="auto", help="retrieval kernel threads: auto (budget.kernel_threads) or an int")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (1 on accelerator ranks)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None,
                    help="step-time lengths, longest first (default 16384 8192 4096; smoke 256 128)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def require_device(device: str) -> Optional[str]:
    """None when ``device`` is usable, else the message that says what is missing and what to run instead."""
    if device == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU build)"
        return (f"gpu_check: CUDA is not available (torch {torch.__version__}, CUDA build: {built}; "
                f"torch.cuda.is_available() is False). This check measures the CUDA retrieval pipeline and needs an "
                f"NVIDIA GPU with a CUDA build of torch. To rehearse every section on the CPU at tiny shapes, run:\n"
                f"    python -m experiments.gpu_check.run --device cpu --smoke")
    return None


def environment(device: torch.device, threads: int, flash: Optional[str]) -> dict:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    return {"card": card, "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__, "numpy": numpy.__version__,
            "lightning": _version("lightning"), "flash_attn": flash, "kernel_threads": threads,
            "cpu_budget": cpu_budget(on_accelerator=device.type == "cuda"), "torch_threads": torch.get_num_threads()}


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # absent: reported as such
        return None


def card_slug(card: str, smoke: bool) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", card.lower()).strip("_")
    return ("cpu" if card.startswith("CPU") else slug) + ("_smoke" if smoke else "")


def run_sections(args: argparse.Namespace, device: torch.device, threads: int, budget: Budget,
                 flash: Optional[str]) -> list[Row]:
    plan = PLANS["smoke" if args.smoke else "full"]
    rows: list[Row] = []
    exactness.pipeline_exactness(rows, device, plan["pipeline"], threads, budget)
    exactness.model_exactness(rows, device, 2, plan["model_len"], threads, budget)
    shape, length = plan["bf16"]
    if budget.allows(plan["reserve_s"] + 30):
        exactness.bf16_forward_backward(rows, device, shape, length, threads)
    else:
        rows.append(Row("2 bf16", "forward + backward", "", "skipped", note="time budget"))
    shape, lengths, window = plan["step"]
    attn = ["sdpa"] + (["flash_attention_2"] if flash and device.type == "cuda" else [])
    step_time.step_time(rows, device, shape, args.lengths or lengths, window, attn, plan["warmup"], plan["steps"],
                        threads, budget, plan["reserve_s"])
    if budget.allows(5):
        fsdp_check.fsdp_check(rows, device, plan["fsdp_len"], threads)
    else:
        rows.append(Row("4 FSDP", "FSDP vs unwrapped", "", "skipped", note="time budget"))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    missing = require_device(args.device)
    if missing:
        print(missing, file=sys.stderr)
        raise SystemExit(2)
    budget = Budget(args.budget_s)
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    threads = kernel_threads(args.threads if args.threads == "auto" else int(args.threads))
    flash = step_time.flash_attention_available()
    env = environment(device, threads, flash)
    print("gpu_check: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    rows = [Row("0 setup", "machine", env["card"], "measured",
                f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}",
                f"python {env['python']}, lightning {env['lightning']}, flash_attn {flash or 'absent'}, "
                f"{threads} kernel threads, {env['torch_threads']} torch threads, budget {args.budget_s:g} s"
                + (", smoke shapes" if args.smoke else ""))]
    rows += run_sections(args, device, threads, budget, flash)
    table = markdown_table(HEADER, [r.cells() for r in rows])
    failed = [r for r in rows if r.result in ("FAIL", "error")]
    summary = (f"{len(rows)} rows: {sum(r.result == 'pass' for r in rows)} pass, {len(failed)} FAIL/error, "
               f"{sum(r.result == 'skipped' for r in rows)} skipped; {budget.elapsed():.0f} s")
    print("\n" + table + "\n" + summary, flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / card_slug(env["card"], args.smoke)
    stem.with_suffix(".md").write_text(f"{env['card']}, `{' '.join(sys.argv[1:]) or '(defaults)'}`\n\n{table}\n{summary}\n")
    write_json(stem.with_suffix(".json"), {"environment": env, "args": {k: str(v) for k, v in vars(args).items()},
                                           "elapsed_s": budget.elapsed(), "rows": [r.to_json() for r in rows]})
    print(f"written: {stem.with_suffix('.md')}, {stem.with_suffix('.json')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
