"""Speculative decoding from the suffix automaton vs plain greedy decoding, at >= 4k tokens of context on the CPU.

A tiny Qwen3 (2 layers, hidden 64, every layer windowed to 64 tokens, ROSA branches on both layers, the token
channel on) is trained for a few minutes on the Python standard library's sources (rows of 512 tokens, three
quarters of them with a span of the row copied again later in the row, so that the model learns to copy through the
token channel). Then, on held-out stdlib files:

- ``code``: code completion, the first C tokens of a held-out file as the prompt;
- ``copy``: a summary-like copy task, a held-out document then a separator then the opening of one of its passages;
- ``random``: a prompt of uniform random token ids (nothing to copy: where drafting cannot help).

For each prompt, plain greedy decoding (prefill, then one forward per token) and speculative decoding
(``speculative_greedy``) produce the same tokens (checked), and their decode throughput (new tokens per second after
the prefill) and the mean acceptance length (tokens emitted per verifying forward) are reported. Side by side in the
same process: single-token decoding with the ROSA state journaled on every step (nothing rolled back) against
unjournaled, the cost that rollback adds when no draft is used.

    python -m experiments.speculative_decoding.run            # about 10 minutes on 2 shared cores
    python -m experiments.speculative_decoding.run --smoke    # seconds; pipeline check (tests/generation)
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, Qwen3Config

from rosa_lightning.data.stdlib_corpus import StdlibCorpus, stdlib_files
from rosa_lightning.generation import RosaGenerationCache
from rosa_lightning.modeling import RosaConfig, build_rosa_model
from rosa_lightning.modeling.generate import speculative_greedy

HERE = Path(__file__).resolve().parent
FULL = dict(steps=600, batch=8, seq=512, context=4096, new_tokens=128, samples=3, vocab=2048,
            tokenizer="data/stdlib_bpe_2048.json", files=None, overhead_steps=192)
SMOKE = dict(steps=3, batch=2, seq=64, context=160, new_tokens=12, samples=1, vocab=300, tokenizer=None, files=14,
             overhead_steps=8)
DRAFTS = [(8, 2), (4, 2), (16, 3)]   # (num_draft, min_match); the first is the headline setting


def build(vocab: int):
    torch.manual_seed(0)
    config = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=192, vocab_size=vocab, max_position_embeddings=16384,
                         tie_word_embeddings=True)
    rosa = RosaConfig(bits=4, window=64, global_layers=0, token_channel="shared", runtime={"num_threads": 1})
    return build_rosa_model(config, rosa)


def training_rows(docs, batch: int, seq: int, rng) -> torch.Tensor:
    """[batch, seq] ids: a quarter plain chunks of a document, three quarters a chunk whose second part repeats a span
    of its first."""
    rows = []
    long_docs = [d for d in docs if len(d) > seq]
    for b in range(batch):
        d = long_docs[rng.integers(len(long_docs))]
        s = int(rng.integers(0, len(d) - seq))
        row = np.array(d[s:s + seq], dtype=np.int64)
        if b % 4:
            cut = int(rng.integers(seq // 4, 3 * seq // 4))
            span = seq - cut
            src = int(rng.integers(0, max(1, cut - span)))
            row[cut:] = row[src:src + span] if src + span <= cut else np.resize(row[src:cut], span)
        rows.append(row)
    return torch.from_numpy(np.stack(rows))


def train(model, docs, steps: int, batch: int, seq: int) -> list[float]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / max(steps, 1)))
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        ids = training_rows(docs, batch, seq, rng)
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def prompts(docs, eot: int, context: int, new_tokens: int, samples: int, vocab: int) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    long_docs = sorted((d for d in docs if len(d) >= context + new_tokens), key=len, reverse=True)
    if not long_docs:  # the smoke corpus: concatenated held-out documents
        long_docs = [np.concatenate(docs)]
    for i in range(samples):
        d = long_docs[i % len(long_docs)]
        out.append({"task": "code", "ids": d[:context]})
        passage = int(rng.integers(0, context // 2))
        head = max(8, context // 128)
        body = d[:context - head - 1]
        out.append({"task": "copy", "ids": np.concatenate([body, [eot], body[passage:passage + head]])})
        out.append({"task": "random", "ids": rng.integers(1, vocab, context)})
    return out


@torch.no_grad()
def plain_greedy(model, prompt: torch.Tensor, max_new: int, journal: bool = False,
                 cpu: bool = False) -> tuple[list[int], float]:
    """Prefill, then one forward per token (what HF's greedy loop does); (tokens, decode seconds: wall, or process
    CPU time with ``cpu``). ``journal``: every step keeps the ROSA undo journals (nothing is rolled back)."""
    rc = RosaGenerationCache.for_model(model)
    kv = DynamicCache(config=model.config)

    def forward(ids, j):
        past = kv.get_seq_length()
        n = ids.shape[1]
        tok = rc.begin(ids, None, journal=j)
        kw = {"rosa_token_ids": tok} if tok is not None else {}
        return model(ids, attention_mask=torch.ones((1, past + n), dtype=torch.long),
                     position_ids=torch.arange(past, past + n)[None], cache=kv, use_cache=True, rosa_cache=rc,
                     **kw).logits[0, -1]

    nxt = int(forward(prompt[None], False).argmax())
    out = [nxt]
    clock = time.process_time if cpu else time.perf_counter
    t0 = clock()
    while len(out) < max_new:
        nxt = int(forward(torch.tensor([[nxt]]), journal).argmax())
        out.append(nxt)
    return out, clock() - t0


def measure(model, items: list[dict], new_tokens: int) -> list[dict]:
    rows = []
    for k, item in enumerate(items):
        prompt = torch.as_tensor(np.asarray(item["ids"]), dtype=torch.long)
        plain, plain_s = plain_greedy(model, prompt, new_tokens)
        if k == 0:  # the study's plain loop is HF's greedy decoding
            hf = model.generate(prompt[None], max_new_tokens=new_tokens, do_sample=False)[0, len(prompt):].tolist()
            assert hf == plain, "the plain loop differs from model.generate"
        row = {"task": item["task"], "context": len(prompt), "plain_tok_s": (new_tokens - 1) / plain_s}
        for num_draft, min_match in DRAFTS:
            out = speculative_greedy(model, prompt[None], max_new_tokens=new_tokens, num_draft=num_draft,
                                     min_match=min_match)
            got = out.sequences[0, len(prompt):].tolist()
            assert got == plain, f"speculative output differs from greedy ({item['task']}, sample {k})"
            s = out.stats
            row[f"spec{num_draft}_{min_match}"] = {"tok_s": (s.new_tokens - 1) / s.decode_s,
                                                   "mean_accepted": s.mean_accepted, "forwards": s.forwards,
                                                   "drafted": s.drafted, "accepted": s.accepted,
                                                   "accepted_from_prompt": s.accepted_from_prompt}
        row["distinct_4grams"] = len({tuple(plain[i:i + 4]) for i in range(len(plain) - 3)}) / max(1, len(plain) - 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def overhead(model, prompt: torch.Tensor, steps: int, reps: int = 5) -> dict:
    """Single-token decoding, journaled vs not, and the speculative loop when it finds nothing to draft (min_match
    out of reach), interleaved in one process (the order rotates every run); median wall and process-CPU seconds per
    token (the CPU time is less disturbed by other processes on a shared machine)."""
    times = {"plain": [], "journaled": [], "spec_no_draft": []}
    cpu = {k: [] for k in times}
    names = list(times)
    for rep in range(reps):
        for name in names[rep % 3:] + names[:rep % 3]:  # each method first, second and third equally often
            if name == "spec_no_draft":
                out = speculative_greedy(model, prompt[None], max_new_tokens=steps + 1, min_match=10**9)
                assert out.stats.drafted == 0
                times[name].append(out.stats.decode_s / steps)
                cpu[name].append(out.stats.decode_cpu_s / steps)
            else:
                _, s = plain_greedy(model, prompt, steps + 1, journal=name == "journaled")
                times[name].append(s / steps)
                _, s = plain_greedy(model, prompt, steps + 1, journal=name == "journaled", cpu=True)
                cpu[name].append(s / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"reps": reps, "steps": steps, "ms_per_token": {k: 1e3 * v for k, v in med.items()},
            "cpu_ms_per_token": {k: 1e3 * v for k, v in mcpu.items()},
            "cpu_added_percent": 100.0 * (mcpu["journaled"] / mcpu["plain"] - 1),
            "cpu_spec_no_draft_added_percent": 100.0 * (mcpu["spec_no_draft"] / mcpu["plain"] - 1),
            "added_percent": 100.0 * (med["journaled"] / med["plain"] - 1),
            "spec_no_draft_added_percent": 100.0 * (med["spec_no_draft"] / med["plain"] - 1)}


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    for task in ("code", "copy", "random"):
        sel = [r for r in rows if r["task"] == task]
        if not sel:
            continue
        plain = statistics.mean(r["plain_tok_s"] for r in sel)
        for num_draft, min_match in DRAFTS:
            key = f"spec{num_draft}_{min_match}"
            fw = sum(r[key]["forwards"] for r in sel)
            acc = sum(r[key]["accepted"] for r in sel)
            spec = statistics.mean(r[key]["tok_s"] for r in sel)
            table.append({"task": task, "num_draft": num_draft, "min_match": min_match, "samples": len(sel),
                          "context": sel[0]["context"], "plain_tok_s": plain, "spec_tok_s": spec,
                          "speedup": spec / plain, "mean_accepted": (fw + acc) / fw,
                          "drafted": sum(r[key]["drafted"] for r in sel), "accepted": acc,
                          "accepted_from_prompt": sum(r[key]["accepted_from_prompt"] for r in sel),
                          "distinct_4grams": statistics.mean(r["distinct_4grams"] for r in sel)})
    return table


def markdown(result: dict) -> str:
    lines = ["| task | context | num_draft / min_match | plain tok/s | speculative tok/s | speed-up | mean acceptance "
             "length | drafts accepted | accepted drafts matched in the prompt | distinct 4-grams of the output |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["table"]:
        lines.append(f"| {r['task']} | {r['context']} | {r['num_draft']} / {r['min_match']} | {r['plain_tok_s']:.1f} | "
                     f"{r['spec_tok_s']:.1f} | {r['speedup']:.2f}x | {r['mean_accepted']:.2f} | "
                     f"{r['accepted']} / {r['drafted']} | {r['accepted_from_prompt']} / {r['accepted']} | "
                     f"{r['distinct_4grams']:.2f} |")
    o = result["overhead"]
    ms = o["ms_per_token"]
    lines += ["", f"Rollback cost with no draft (single-token decoding, {result['config']['context']} tokens of "
              f"context, {o['steps']} tokens, median of {o['reps']} interleaved runs): plain {ms['plain']:.2f} "
              f"ms/token, journaled {ms['journaled']:.2f} ms/token ({o['added_percent']:+.1f} %); the speculative "
              f"loop finding nothing to draft {ms['spec_no_draft']:.2f} ms/token "
              f"({o['spec_no_draft_added_percent']:+.1f} %). In process CPU time: plain "
              f"{o['cpu_ms_per_token']['plain']:.2f}, journaled {o['cpu_ms_per_token']['journaled']:.2f} "
              f"({o['cpu_added_percent']:+.1f} %), nothing to draft "
              f"{o['cpu_ms_per_token']['spec_no_draft']:.2f} ms/token "
              f"({o['cpu_spec_no_draft_added_percent']:+.1f} %).",
              "", f"Training: {result['config']['steps']} steps in {result['train_s']:.0f} s, loss "
              f"{result['loss_first']:.2f} -> {result['loss_last']:.2f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long pipeline check; writes nothing here")
    parser.add_argument("--out", default=None, help="output folder (default: this folder; --smoke: none)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 600)")
    args = parser.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.steps is not None:
        cfg["steps"] = args.steps
    torch.set_num_threads(1)
    files = stdlib_files()[:cfg["files"]] if cfg["files"] else None
    corpus = StdlibCorpus(tokenizer_path=cfg["tokenizer"], vocab_size=cfg["vocab"], files=files,
                          held_out_fraction=0.1 if not args.smoke else 0.3)
    train_docs, held_out = corpus.documents("train"), corpus.documents("val")
    vocab = corpus.tokenizer.get_vocab_size()
    model = build(vocab)
    t0 = time.perf_counter()
    losses = train(model, train_docs, cfg["steps"], cfg["batch"], cfg["seq"])
    train_s = time.perf_counter() - t0
    items = prompts(held_out, corpus.eot_id, cfg["context"], cfg["new_tokens"], cfg["samples"], vocab)
    rows = measure(model, items, cfg["new_tokens"])
    over = overhead(model, torch.as_tensor(np.asarray(items[0]["ids"]), dtype=torch.long), cfg["overhead_steps"],
                    reps=15 if not args.smoke else 3)
    result = {"config": cfg, "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread, "
              f"1 kernel thread", "train_s": train_s, "loss_first": losses[0], "loss_last": losses[-1],
              "rows": rows, "table": summarise(rows), "overhead": over}
    out = Path(args.out) if args.out else (None if args.smoke else HERE)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1))
        (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
