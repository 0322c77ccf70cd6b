"""Peak host memory of the next-token loss and its backward: all [T, V] logits at once vs chunks of scored positions.

Each configuration runs in a fresh process: hidden states [1, T, C] and an lm_head [V, C] (requires_grad, like
a trained backbone or the stage-B head) in ``--dtype``, then the loss of ``rosa_lightning.lit_module``
(``shifted_cross_entropy`` on the full logits, or ``chunked_next_token_loss``) and its backward. Reported: the
growth of the process's peak RSS over the inputs alone (``ru_maxrss``), in MiB, and the loss value (equal
across paths to float rounding).

    python -m experiments.loss_memory.bench --tokens 4096 --vocab 151936 --hidden 1024 --chunks 0 4096 1024 256
"""
import argparse
import json
import resource
import subprocess
import sys

import torch


def run_one(tokens: int, vocab: int, hidden: int, chunk: int, dtype: str) -> dict:
    from rosa_lightning.modeling.losses import chunked_next_token_loss, shifted_cross_entropy

    torch.manual_seed(0)  # the same lm_head init in every process
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    h = (torch.randn(1, tokens, hidden, generator=g) * 0.5).to(dt).requires_grad_()
    head = torch.nn.Linear(hidden, vocab, bias=False).to(dt)
    labels = torch.randint(0, vocab, (1, tokens), generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if chunk == 0:
        loss, _ = shifted_cross_entropy(head(h), labels)
    else:
        loss, _ = chunked_next_token_loss(h, head, labels, chunk)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"chunk": chunk, "peak_growth_mib": round((peak - base) / 1024, 1), "loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 4096, 1024, 256], help="0 = all logits at once")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process: one chunk size
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.tokens, args.vocab, args.hidden, args.one, args.dtype)))
        return
    rows = []
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "--tokens", str(args.tokens), "--vocab", str(args.vocab), "--hidden",
               str(args.hidden), "--dtype", args.dtype, "--one", str(chunk)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    logits_mib = args.tokens * args.vocab * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**20
    print(f"T={args.tokens}, V={args.vocab}, C={args.hidden}, {args.dtype}; one [T, V] logits tensor = {logits_mib:,.0f} MiB\n")
    print("| loss | peak RSS growth (MiB) | loss value |\n|---|---|---|")
    for r in rows:
        name = "all logits" if r["chunk"] == 0 else f"chunks of {r['chunk']}"
        print(f"| {name} | {r['peak_growth_mib']:,.0f} | {r['loss']:.6f} |")


if __name__ == "__main__":
    main()
