"""Evaluation throughput: prefill and decode tokens per second of eval.py's generation path, per arm.

The three arms of the published table on one random-weight model: global attention, the window alone,
and window + ROSA (non-zero e0/e1, so the branch really runs). Each sample is a random prompt of
``--lengths`` tokens decoded for exactly ``--new-tokens`` tokens (no early stop) through
``rosa_lightning.evaluation.runner.generate_batch``, i.e. ``model.generate`` with the ROSA generation cache:
one prefill, then one token at a time. Prefill seconds end when the first next-token scores arrive.

    python -m experiments.eval_throughput.bench                                   # tiny shape, CPU
    python -m experiments.eval_throughput.bench --shape qwen3_0p6b --device cuda --dtype bfloat16 \\
        --lengths 4096 16384 32768 --window 2048                                   # on a GPU

Writes ``results/<shape>_<device>.json`` beside this script and prints a markdown table.
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import Qwen3Config

from rosa_lightning.evaluation.runner import Sample, Throughput, generate_batch
from rosa_lightning.generation.loading import resolve_device
from rosa_lightning.modeling import RosaConfig, build_rosa_model, rosa_layers

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=1024),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, vocab_size=8192),
    "qwen3_0p6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936),
}
ARMS = {"global": dict(window=None, runtime={"enabled": False}), "window": dict(runtime={"enabled": False}),
        "window+rosa": dict()}


class _Pad:
    """The two tokenizer attributes generate_batch reads (pad and eos ids)."""

    pad_token_id = 0
    eos_token_id = 0


def build(shape: str, arm: str, window: int, dtype, device: str, seed: int = 0):
    torch.manual_seed(seed)
    config = Qwen3Config(**SHAPES[shape], max_position_embeddings=131072, tie_word_embeddings=True,
                         eos_token_id=0, pad_token_id=0)
    rosa = RosaConfig(**{"window": window, "global_layers": 1, **ARMS[arm]})
    model = build_rosa_model(config, rosa, torch_dtype=dtype).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in rosa_layers(model):
            layer.rosa.e0.copy_(torch.randn(layer.rosa.e0.shape, generator=g))
            layer.rosa.e1.copy_(torch.randn(layer.rosa.e1.shape, generator=g))
    return model.to(device)


def measure(model, length: int, new_tokens: int, batch: int, repeats: int) -> Throughput:
    g = torch.Generator().manual_seed(length)
    vocab = model.config.vocab_size
    total = Throughput()
    for r in range(repeats + 1):  # the first round warms up (allocations, kernels) and is not counted
        samples = [Sample(f"{r}-{i}", torch.randint(1, vocab, (length,), generator=g).tolist(), new_tokens,
                          min_new_tokens=new_tokens) for i in range(batch)]
        _, timing = generate_batch(model, _Pad(), samples)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        if r:
            total.add(timing)
    return total


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="results file (default: results/<shape>_<device>.json)")
    args = ap.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    rows = []
    for arm in ARMS:
        model = build(args.shape, arm, args.window, dtype, device)
        for length in args.lengths:
            t0 = time.perf_counter()
            tp = measure(model, length, args.new_tokens, args.batch, args.repeats).as_dict()
            rows.append({"arm": arm, "length": length, **tp, "wall_s": round(time.perf_counter() - t0, 2)})
            print(f"{arm:12s} {length:6d}  prefill {tp['prefill_tokens_per_s']} tok/s  decode {tp['decode_tokens_per_s']} tok/s",
                  flush=True)
        del model
    machine = (torch.cuda.get_device_name() if device.startswith("cuda") else
               f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    out = args.out or Path(__file__).resolve().parent / "results" / f"{args.shape}_{device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {**vars(args), "out": str(out)}, "machine": machine, "rows": rows},
                              indent=2) + "\n")
    window_decode = {r["length"]: r["decode_tokens_per_s"] for r in rows if r["arm"] == "window"}
    print(f"\n{args.shape}, {machine}, batch {args.batch}, {args.new_tokens} new tokens, window {args.window}\n")
    print("| arm | context | prefill tok/s | decode tok/s | decode vs window |\n|---|---|---|---|---|")
    for r in rows:
        ratio = r["decode_tokens_per_s"] / window_decode[r["length"]]
        print(f"| {r['arm']} | {r['length']} | {r['prefill_tokens_per_s']:,.0f} | {r['decode_tokens_per_s']:,.1f} | {ratio:.2f} |")
    print(f"\nwrote {out}")
    return rows


if __name__ == "__main__":
    main()
