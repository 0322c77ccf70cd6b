"""Does content copying form in a small Qwen3 trained from scratch, and how fast?

A plain training loop (no framework) on the cleanest copying data: each row is one random block of ``U[lo, hi]``
tokens from ``vocab`` ids, repeated to fill the row, so every position from ``hi`` on is a copy and, since the
block length varies, a fixed look-back offset cannot predict it. Prints the loss on those positions of 64 held-out
rows every ``--every`` steps (uniform: ln vocab). ``--warm-steps`` trains on other block lengths first
(``--warm-lo``, ``--warm-hi``); ``--schedule`` runs a curriculum of stages (ids, block lengths, row length) before
the main phase; ``--row-ids`` limits each training row to a random subset of the ids. The README's "Probes"
tables come from it, e.g.:

    python -m experiments.retrofit_recovery.copy_probe --steps 400 --every 100 --vocab 256
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--lo", type=int, default=8, help="shortest block")
    p.add_argument("--hi", type=int, default=32, help="longest block (scored from this position on)")
    p.add_argument("--T", type=int, default=128, help="row length")
    p.add_argument("--B", type=int, default=32, help="rows per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--warm-steps", type=int, default=0, help="steps on --warm-lo..--warm-hi blocks first")
    p.add_argument("--warm-lo", type=int, default=8)
    p.add_argument("--warm-hi", type=int, default=32)
    p.add_argument("--tie", action="store_true", help="tie the LM head to the embeddings (as pretrain_code does)")
    p.add_argument("--qk-norm-init", type=float, default=1.0,
                   help="initial weight of the query/key RMSNorms (1 = HF default; caps the first attention logits)")
    p.add_argument("--embed-std", type=float, default=0.0,
                   help="initial std of the embeddings and LM head (0: HF's initializer_range, 0.02)")
    p.add_argument("--warm-vocab", type=int, default=0, help="ids drawn during the --warm-steps (0: --vocab)")
    p.add_argument("--schedule", default="",
                   help="curriculum before the main phase: comma-separated vocab:lo:hi:steps[:T] stages (ids, "
                        "block lengths, steps, row length: --T unless given), e.g. 64:8:32:300:128,512:8:32:200")
    p.add_argument("--row-ids", type=int, default=0,
                   help="training rows draw their block from a random subset of this many of the phase's ids "
                        "(0: all of them); held-out rows always draw from all --vocab ids")
    p.add_argument("--minutes", type=float, default=40.0, help="stop after this much wall time")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    try:
        a.stages = [tuple(int(v) for v in st.split(":")) for st in a.schedule.split(",") if st]
        assert all(len(st) in (4, 5) for st in a.stages)
    except (ValueError, AssertionError):
        raise SystemExit(f"--schedule takes vocab:lo:hi:steps[:T] stages separated by commas, got {a.schedule!r}")
    a.stages = [st if len(st) == 5 else st + (a.T,) for st in a.stages]
    for v, lo, hi, n, T in a.stages:
        if not (1 <= v <= a.vocab and 1 <= lo <= hi < T <= a.T and n >= 1):
            raise SystemExit(f"schedule stage {v}:{lo}:{hi}:{n}:{T} needs 1 <= vocab <= --vocab={a.vocab}, "
                             f"1 <= lo <= hi < T <= --T={a.T} and steps >= 1")
    if a.row_ids < 0:
        raise SystemExit(f"--row-ids must be >= 0 (0: every id), got {a.row_ids}")
    for lo, hi in [(a.lo, a.hi)] + ([(a.warm_lo, a.warm_hi)] if a.warm_steps else []):
        if not 1 <= lo <= hi < a.T:
            raise SystemExit(f"block lengths must satisfy 1 <= lo <= hi < T={a.T}, got lo={lo}, hi={hi}")
    return a


def copy_rows(n: int, T: int, vocab: int, lo: int, hi: int, g: torch.Generator, row_ids: int = 0) -> torch.Tensor:
    """[n, T] rows, each one random block of U[lo, hi] tokens repeated; with ``row_ids`` (< vocab) a row's tokens
    come from a random subset of that many of the ``vocab`` ids."""
    out = torch.empty(n, T, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        if 0 < row_ids < vocab:
            ids = torch.randperm(vocab, generator=g)[:row_ids]
            block = ids[torch.randint(0, row_ids, (length,), generator=g)]
        else:
            block = torch.randint(0, vocab, (length,), generator=g)
        out[i] = block.repeat(T // length + 1)[:T]
    return out


def phase(a: argparse.Namespace, step: int) -> tuple[int, int, int, int]:
    """(row length, ids, shortest block, longest block) drawn at ``step``: the warm-up, then the schedule's
    stages, then the main phase."""
    if step < a.warm_steps:
        return a.T, a.warm_vocab or a.vocab, a.warm_lo, a.warm_hi
    step -= a.warm_steps
    for vocab, lo, hi, n, T in a.stages:
        if step < n:
            return T, vocab, lo, hi
        step -= n
    return a.T, a.vocab, a.lo, a.hi


def copied_loss(model, ids: torch.Tensor, hi: int) -> float:
    logits = model(input_ids=ids).logits[:, hi - 1:-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, hi:].flatten()).item()


def main(argv=None) -> list[tuple[int, float]]:
    a = parse(argv)
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    cfg = Qwen3Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                      head_dim=a.hidden // a.heads, max_position_embeddings=a.T, tie_word_embeddings=a.tie)
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.fill_(a.qk_norm_init)
            layer.self_attn.k_norm.weight.fill_(a.qk_norm_init)
        if a.embed_std > 0:
            model.model.embed_tokens.weight.normal_(0.0, a.embed_std)
            if not a.tie:
                model.lm_head.weight.normal_(0.0, a.embed_std)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    held = copy_rows(64, a.T, a.vocab, a.lo, a.hi, torch.Generator().manual_seed(2))
    print(f"uniform {math.log(a.vocab):.3f}; {vars(a)}", flush=True)
    curve, t0, step = [], time.time(), 0
    for step in range(a.steps + 1):
        if step % a.every == 0 or step == a.steps:
            model.eval()
            now, extra = phase(a, step), ""
            with torch.no_grad():
                curve.append((step, copied_loss(model, held, a.hi)))
                if now != (a.T, a.vocab, a.lo, a.hi) or a.row_ids:   # also on rows like those being trained
                    own = copied_loss(model, copy_rows(64, *now, torch.Generator().manual_seed(3), a.row_ids),
                                      now[3])
                    subset = f" ({a.row_ids} ids a row)" if a.row_ids else ""
                    extra = f"; on the current phase (T, ids, lo, hi) {now}{subset}: {own:.3f}"
            model.train()
            print(f"step {step} copied-token loss {curve[-1][1]:.3f}{extra} ({time.time() - t0:.0f} s)", flush=True)
        if step == a.steps or time.time() - t0 > a.minutes * 60:
            break
        for group in opt.param_groups:
            group["lr"] = a.lr * min(1.0, (step + 1) / 50)
        now = phase(a, step)
        ids = copy_rows(a.B * a.T // now[0], *now, g, a.row_ids)   # the same tokens per step at any row length
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1).float(),
                                                 ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    print(f"done at step {step} ({time.time() - t0:.0f} s)")
    return curve


if __name__ == "__main__":
    main()
