"""Decode cost of ROSA generation: latency per token and memory per token of context (docs/generation.md §4).

A small random-weight model (hidden 256, 4 layers, window 256, ROSA on layers 1-3 with non-zero
e0/e1, fp32, sdpa) is prefilled to a context of 1k/4k/16k/64k tokens (random ids, chunks of
``--chunk``) through the same path as ``generate()`` (HF ``DynamicCache`` + ``RosaGenerationCache``),
then decodes single tokens. Two attention layouts: layer 0 global (the published placement) and
every layer windowed. Reported: median ms per decoded token (and the part spent in ROSA
retrieval), the KV bytes each layer holds, and the ROSA state (automaton + stored V symbols) per
(route, token), which also gives a Qwen3-1.7B-shaped estimate (27 ROSA layers x 512 routes).

    python -m experiments.decode_cost.bench [--contexts 1024 4096 16384 65536] [--steps 32]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import DynamicCache, Qwen3Config

from rosa_lightning.generation import RosaGenerationCache, kv_cache_nbytes
from rosa_lightning.modeling import RosaConfig, build_rosa_model, rosa_layers

HIDDEN, LAYERS, WINDOW, VOCAB, BITS = 256, 4, 256, 1024, 4
QWEN17B = dict(rosa_layers=27, routes=2048 // 4, layers=28, kv_heads=8, head_dim=128, window=2048)


class TimedCache(RosaGenerationCache):
    """Accumulates the seconds spent in ``retrieve`` (kernel scan, V store and gather)."""

    retrieve_s = 0.0

    def retrieve(self, layer_idx, q_sym, k_sym, v_sym):
        t0 = time.perf_counter()
        out = super().retrieve(layer_idx, q_sym, k_sym, v_sym)
        self.retrieve_s += time.perf_counter() - t0
        return out


def build(global_layers: int, threads: int):
    torch.manual_seed(0)
    config = Qwen3Config(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=64, intermediate_size=768, vocab_size=VOCAB, max_position_embeddings=70000)
    rosa = RosaConfig(bits=BITS, window=WINDOW, global_layers=global_layers, rosa_layers=[1, 2, 3],
                      runtime={"num_threads": threads})
    model = build_rosa_model(config, rosa).eval()
    with torch.no_grad():
        for layer in rosa_layers(model):
            layer.rosa.e0.normal_()
            layer.rosa.e1.normal_()
    return model


@torch.no_grad()
def measure(model, context: int, steps: int, chunk: int) -> dict:
    ids = torch.randint(0, VOCAB, (1, context + steps), generator=torch.Generator().manual_seed(context))
    rc = TimedCache.for_model(model)
    kv = DynamicCache(config=model.config)
    t0 = time.perf_counter()
    for s in range(0, context, chunk):
        part = ids[:, s:min(s + chunk, context)]
        model(part, cache=kv, use_cache=True, logits_to_keep=1, **rc.forward_kwargs(part))
    prefill_s = time.perf_counter() - t0
    rc.retrieve_s = 0.0
    per_step = []
    for t in range(context, context + steps):
        t0 = time.perf_counter()
        model(ids[:, t:t + 1], cache=kv, use_cache=True, **rc.forward_kwargs(ids[:, t:t + 1]))
        per_step.append(time.perf_counter() - t0)
    tokens = context + steps
    rosa = rc.nbytes()
    route_tokens = len(rc.layers) * rc.routes * tokens
    return {"context": context, "prefill_s": prefill_s, "steps": steps,
            "ms_per_token": 1e3 * statistics.median(per_step),
            "rosa_ms_per_token": 1e3 * rc.retrieve_s / steps,
            "kv": kv_cache_nbytes(kv), "rosa_bytes": rosa,
            "automaton_B_per_route_token": rosa["automaton"] / route_tokens,
            "values_B_per_route_token": rosa["values"] / route_tokens}


def qwen17b_estimate(automaton_b: float, values_b: float) -> dict:
    """Bytes per token of context at Qwen3-1.7B shape, from measured ROSA bytes per (route, token)."""
    q = QWEN17B
    kv_token = 2 * q["kv_heads"] * q["head_dim"] * 2  # K and V, bf16, one layer
    return {"full_kv_B_per_token": q["layers"] * kv_token, "global_layer_kv_B_per_token": kv_token,
            "windowed_kv_fixed_B": (q["layers"] - 1) * (q["window"] - 1) * kv_token,
            "rosa_B_per_token": q["rosa_layers"] * q["routes"] * (automaton_b + values_b)}


def report(results: dict) -> str:
    """Markdown tables of a results dict (as written by ``--out``)."""
    lines = ["| layout | context | ms/token (median) | of which ROSA | prefill s | KV KiB per layer (0..3) |",
             "|---|---|---|---|---|---|"]
    for name, rows in results["runs"].items():
        for r in rows:
            kv = " / ".join(f"{l['bytes'] / 1024:.0f}" for l in r["kv"])
            lines.append(f"| {name} | {r['context']} | {r['ms_per_token']:.1f} | {r['rosa_ms_per_token']:.1f} | "
                         f"{r['prefill_s']:.1f} | {kv} |")
    lines += ["", "| context | ROSA automaton B/(route, token) | stored V B/(route, token) | ROSA MiB (3 layers x 64 "
              "routes) | 1.7B-shaped ROSA KiB/token | vs full bf16 KV (112 KiB/token) |", "|---|---|---|---|---|---|"]
    for r in results["runs"]["layer 0 global"]:
        est = qwen17b_estimate(r["automaton_B_per_route_token"], r["values_B_per_route_token"])
        lines.append(f"| {r['context']} | {r['automaton_B_per_route_token']:.1f} | "
                     f"{r['values_B_per_route_token']:.2f} | {r['rosa_bytes']['total'] / 2**20:.0f} | "
                     f"{est['rosa_B_per_token'] / 1024:.0f} | "
                     f"{est['rosa_B_per_token'] / est['full_kv_B_per_token']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--steps-64k", type=int, default=16, help="decode steps at contexts >= 65536")
    parser.add_argument("--chunk", type=int, default=1024, help="prefill chunk")
    parser.add_argument("--threads", type=int, default=1, help="retrieval kernel threads")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the raw results as JSON here")
    parser.add_argument("--report", default=None, help="only print the tables of a saved JSON")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f)))
        return
    torch.set_num_threads(args.torch_threads)
    runs = {}
    for name, global_layers in (("layer 0 global", 1), ("all windowed", 0)):
        model = build(global_layers, args.threads)
        measure(model, 256, 4, args.chunk)  # warm-up
        runs[name] = []
        for c in args.contexts:
            r = measure(model, c, args.steps_64k if c >= 65536 else args.steps, args.chunk)
            runs[name].append(r)
            print(f"{name}, context {c}: {r['ms_per_token']:.2f} ms/token", flush=True)
        del model
    results = {"runs": runs, "qwen3_1p7b_shape": QWEN17B}
    print(report(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
