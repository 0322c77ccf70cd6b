"""Does a pretrained run copy? Loss on the second copy of a repeated block of held-out code against the first.

Rows are the study's ``RepeatRows`` (a block of test-split code, other code, the block again, after filler code,
``--seq-len`` tokens; ``--kind digest``: a block of random digests instead). A model that copies from its context
predicts the second copy far better than the first; one that does not scores them alike. Prints both mean losses
and their difference, e.g.::

    python -m experiments.retrofit_recovery.repeat_probe logs/pretrain_code/runs/<time>
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def copy_losses(model, rows) -> tuple[float, float]:
    """Mean next-token loss of ``model`` on the first and on the second copy over ``rows`` (a ``RepeatRows``), on
    the same tokens in both (``copy_core`` of the second copy; rows without such a first copy are left out)."""
    from experiments.retrofit_recovery.run import copy_core, first_copy

    totals = {"first": [0.0, 0], "second": [0.0, 0]}
    model.eval()
    with torch.no_grad():
        for ids, second in rows.rows:
            first = first_copy(ids, second)
            if not (first != -100).any():
                continue
            logits = model(input_ids=ids[None]).logits[0, :-1].float()
            for name, labels in (("first", first), ("second", copy_core(second))):
                target = labels[1:]
                keep = target != -100
                loss = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
                totals[name][0] += float(loss)
                totals[name][1] += int(keep.sum())
    if not totals["first"][1]:
        raise ValueError("copy_losses: no row holds its block's tokens twice")
    return totals["first"][0] / totals["first"][1], totals["second"][0] / totals["second"][1]


def main(argv=None) -> tuple[float, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished experiment=pretrain_code run folder")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--kind", choices=("repeat", "digest"), default="repeat",
                   help="a block of code repeated, or a block of random digests repeated under another header")
    p.add_argument("--window", type=int, default=None,
                   help="score the run converted to this attention window (its global_layers stay global)")
    p.add_argument("--seq-len", type=int, default=None, help="row length (default: the run's data.seq_len)")
    a = p.parse_args(argv)
    import hydra

    from experiments.retrofit_recovery.export_backbone import load_run_module
    from experiments.retrofit_recovery.run import RepeatRows

    module, cfg = load_run_module(a.run_dir, None if a.window is None else {"model.rosa.window": a.window})
    source = hydra.utils.instantiate(cfg.data.source)
    rows = RepeatRows(source, a.rows, a.seq_len or int(cfg.data.seq_len), kind=a.kind)
    first, second = copy_losses(module.model, rows)
    window = a.window if a.window is not None else cfg.model.rosa.get("window")  # a tuning run is windowed
    where = "global" if window is None else f"window {window}"
    print(f"{a.run_dir} ({where}): {a.rows} {a.kind} rows of {a.seq_len or cfg.data.seq_len} tokens; loss on the "
          f"first copy {first:.3f}, on the second {second:.3f} (second - first {second - first:+.3f})")
    return first, second


if __name__ == "__main__":
    main()
