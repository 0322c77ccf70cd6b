"""Does a pretrained run find the needle? Teacher-forced loss and accuracy on RULER niah_single_1 answers.

For each sample of ``rosa_lightning.evaluation.niah.generate_niah`` (RULER's generator, the evaluation's samples
at ``--length``), the prompt is followed by `` {value}`` and the model is scored on the value's tokens only:
mean loss on the first value token (finding the needle: nothing in the question names the number) and on the rest
(copying it on), and the share of samples whose every value token is the model's argmax. Greedy decoding of such a
sample writes the value, so that share is what the evaluation's NIAH score would be at least; this probe also shows
progress (a falling first-token loss) before any sample is right. Uniform loss is ln(vocabulary size)::

    python -m experiments.retrofit_recovery.niah_probe logs/retrofit_recovery/backbone --length 512
    python -m experiments.retrofit_recovery.niah_probe <run dir> --length 512 --window 64   # the window conversion

The model is a train.py run folder or a plain Qwen3 directory with its tokenizer (what ``export_backbone`` writes),
which is built as the study's ``retrofit_global`` arm (``retrofit_window`` with ``--window``).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def niah_answer_scores(model, tokenizer, records) -> dict:
    """Teacher-forced scores of ``model`` on the values of NIAH ``records`` (``generate_niah``'s): ``first`` and
    ``rest`` (mean loss on the first value token and on the others), ``exact`` (share of records whose every value
    token is the argmax), ``samples``."""
    first, rest, exact = [], [], 0
    model.eval()
    with torch.no_grad():
        for r in records:
            text = r["input"] + " " + r["answers"][0]
            enc = tokenizer(text, return_offsets_mapping=True)
            ids = torch.tensor(enc["input_ids"])
            start = len(r["input"])
            value = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start]
            if not value or value[0] == 0:
                raise ValueError(f"niah_answer_scores: no value token after the prompt of {r['_id']}")
            logits = model(input_ids=ids[None]).logits[0].float()
            at = torch.tensor(value)
            logp = torch.log_softmax(logits[at - 1], dim=-1)
            losses = -logp.gather(1, ids[at][:, None])[:, 0]
            first.append(float(losses[0]))
            rest.extend(float(x) for x in losses[1:])
            exact += bool((logp.argmax(-1) == ids[at]).all())
    return {"first": sum(first) / len(first), "rest": sum(rest) / len(rest) if rest else math.nan,
            "exact": exact / len(records), "samples": len(records)}


def load_model(path: Path, window: int | None):
    """(module, tokenizer) of a train.py run folder or of a plain Qwen3 directory (module doc)."""
    import tempfile

    import hydra
    from transformers import AutoTokenizer

    from experiments.harness import runs
    from experiments.retrofit_recovery.export_backbone import load_run_module

    path = Path(path)
    if not (path / "config.json").is_file():
        module, cfg = load_run_module(path, None if window is None else {"model.rosa.window": window})
        return module, hydra.utils.instantiate(cfg.data.source).tokenizer
    arm = ["retrofit_global"] if window is None else ["retrofit_window", f"model.rosa.window={window}"]
    with tempfile.TemporaryDirectory() as out:
        cfg = runs.compose(arm[0], [f"model.backbone={path.resolve()}", *arm[1:]], Path(out))
        return hydra.utils.instantiate(cfg.model), AutoTokenizer.from_pretrained(path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a finished train.py run folder or a plain Qwen3 directory")
    p.add_argument("--length", type=int, default=512, help="RULER's max_seq_length of the samples")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=42, help="RULER's seed (the evaluation's default)")
    p.add_argument("--window", type=int, default=None,
                   help="score the run converted to this attention window (its global_layers stay global)")
    a = p.parse_args(argv)
    from rosa_lightning.evaluation.niah import generate_niah

    module, tokenizer = load_model(a.model, a.window)
    records = generate_niah(tokenizer, a.length, a.samples, seed=a.seed)
    scores = niah_answer_scores(module.model, tokenizer, records)
    where = "global" if a.window is None else f"window {a.window}"
    print(f"{a.model} ({where}): {scores['samples']} niah_single_1 samples at {a.length}; loss on the first value "
          f"token {scores['first']:.3f}, on the rest {scores['rest']:.3f} (uniform {math.log(len(tokenizer)):.2f}); "
          f"all value tokens argmax on {100 * scores['exact']:.0f} %")
    return scores


if __name__ == "__main__":
    main()
