"""Token channel (docs/retrieval.md §9) throughput: ns per token, one thread, one row of T tokens.

Inputs: uniform random ids over the Qwen3 vocabulary, periodic text (period 1..64), long runs of
one id, and a random block repeated 8 times. Two kernels side by side in one process: the
shipped one (link-cut tree for latest end positions) and the plain O(depth) latest-end walk of
docs/retrieval.md §9.2 (the ``_plain`` testing switch). Also reports bytes of streaming state per token.

    python -m experiments.retrieval_throughput.bench_tokens [--T 16384] [--repeats 5]
"""
import argparse
import time

import numpy as np

from rosa_lightning.retrieval.tokens import TokenStream, rosa_next_token

VOCAB = 151936


def inputs(t: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cases = {"random (vocab 151936)": rng.integers(0, VOCAB, t)}
    for p in (1, 2, 3, 4, 8, 16, 32, 64):
        cases[f"periodic, period {p}"] = np.tile(rng.choice(VOCAB, p, replace=False), t // p + 1)[:t]
    runs = np.repeat(rng.integers(0, VOCAB, t // 256 + 1), 256)[:t]
    cases["runs of 256 equal ids"] = runs
    cases["random block x 8"] = np.tile(rng.integers(0, VOCAB, t // 8), 8)
    return {k: np.ascontiguousarray(v[None, :t], dtype=np.int64) for k, v in cases.items()}


def ns_per_token(ids: np.ndarray, plain: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        rosa_next_token(ids, num_threads=1, _plain=plain)
        best = min(best, time.perf_counter() - t0)
    return best * 1e9 / ids.size


def stream_bytes_per_token(ids: np.ndarray) -> float:
    stream = TokenStream(1, num_threads=1)
    stream.scan(ids)
    return stream.nbytes() / ids.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = inputs(args.T, np.random.default_rng(0))
    base = None
    print(f"T = {args.T}, one thread, best of {args.repeats}\n")
    print("| input | ns/token (link-cut) | ns/token (plain walk) | cost vs random | stream bytes/token |")
    print("|---|---:|---:|---:|---:|")
    for name, ids in cases.items():
        fast = ns_per_token(ids, False, args.repeats)
        plain = ns_per_token(ids, True, max(1, args.repeats // 2))
        base = fast if base is None else base
        print(f"| {name} | {fast:.0f} | {plain:.0f} | {fast / base:.2f}x | {stream_bytes_per_token(ids):.0f} |")


if __name__ == "__main__":
    main()
