"""Does a pretrained run find the needle? Teacher-forced loss and accuracy on RULER niah_single_1 answers.

For each sample of ``rosa_lightning.evaluation.niah.generate_niah`` (RULER's generator, the evaluation's samples
at ``--length``), the prompt is followed by `` {value}`` and the model is scored on the value's tokens only:
mean loss on the first value token (finding the needle: nothing in the question names the number) and on the rest
(copying it on), and the share of samples whose every value token is the model's argmax. Greedy decoding of such a
sample writes the value, so that share is what the evaluation's NIAH score would be at least; this probe also shows
progress (a falling first-token loss) before any sample is right. Uniform loss is ln(vocabulary size)::

    python -m experiments.retrofit_recovery.niah_probe logs/retrofit_recovery/backbone --length 512
    python -m experiments.retrofit_recovery.niah_probe <run dir> --length 512 --window 64   # the window conversion
    python -m experiments.retrofit_recovery.niah_probe logs/retrofit_recovery/stage_b/model --retrieval

``--retrieval`` (a model with ROSA branches) also reports where the branches' retrieval points: the share of
destinations in the needle's sentence at the position before the value's first token and before its later ones.

The model is a train.py run folder, a merged ROSA directory (``model_type: rosa_qwen3``: a trained arm's ``model/``
folder) or a plain Qwen3 directory with its tokenizer (what ``export_backbone`` writes), which is built as the
study's ``retrofit_global`` arm (``retrofit_window`` with ``--window``).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def answer_tokens(tokenizer, record: dict, caller: str):
    """(tokenizer output of the record's prompt followed by `` {value}``, with offsets; positions of the value's
    tokens): the teacher-forced row both probes score."""
    enc = tokenizer(record["input"] + " " + record["answers"][0], return_offsets_mapping=True)
    value = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > len(record["input"])]
    if not value or value[0] == 0:
        raise ValueError(f"{caller}: no value token after the prompt of {record['_id']}")
    return enc, value


def niah_answer_scores(model, tokenizer, records) -> dict:
    """Teacher-forced scores of ``model`` on the values of NIAH ``records`` (``generate_niah``'s): ``first`` and
    ``rest`` (mean loss on the first value token and on the others), ``exact`` (share of records whose every value
    token is the argmax), ``samples``."""
    first, rest, exact = [], [], 0
    model.eval()
    with torch.no_grad():
        for r in records:
            enc, value = answer_tokens(tokenizer, r, "niah_answer_scores")
            ids = torch.tensor(enc["input_ids"])
            logits = model(input_ids=ids[None]).logits[0].float()
            at = torch.tensor(value)
            logp = torch.log_softmax(logits[at - 1], dim=-1)
            losses = -logp.gather(1, ids[at][:, None])[:, 0]
            first.append(float(losses[0]))
            rest.extend(float(x) for x in losses[1:])
            exact += bool((logp.argmax(-1) == ids[at]).all())
    return {"first": sum(first) / len(first), "rest": sum(rest) / len(rest) if rest else math.nan,
            "exact": exact / len(records), "samples": len(records)}


class TauRecorder:
    """A batch retriever (the ``rosa_lightning.retrieval.seam.Retriever`` protocol) that forwards every layer's job
    to ``pipeline`` and keeps the destination times (tau, int64 [B, R, T]) of the last forward, by layer index."""

    streaming = False

    def __init__(self, pipeline) -> None:
        self.pipeline, self.taus = pipeline, {}

    def submit(self, layer_idx, q_sym, k_sym, bits, want_cf, reuse=False):
        job, taus = self.pipeline.submit(layer_idx, q_sym, k_sym, bits, want_cf, reuse), self.taus

        class _Job:
            def result(self, v_sym):
                found = job.result(v_sym)
                taus[layer_idx] = found.tau.detach().to("cpu", torch.int64)
                return found

        return _Job()

    def end_forward(self) -> None:
        self.pipeline.end_forward()


def has_branches(model) -> bool:
    """Whether ``model`` retrieves through ROSA branches: it has some and ``rosa.runtime.enabled`` is on."""
    from rosa_lightning.modeling import rosa_layers

    config = getattr(getattr(model, "model", None), "rosa_config", None)
    return config is not None and config.enabled and bool(rosa_layers(model))


def needle_sentence_tokens(record: dict, offsets) -> tuple[int, int]:
    """[first, last] token positions of the needle's sentence ("One of the special magic numbers for <key> is:
    <value>.") in a NIAH record's prompt, from the tokenizer's character ``offsets``."""
    value = record["answers"][0]
    end = record["input"].index(f" is: {value}.") + len(f" is: {value}.")
    start = record["input"].rindex("One of the special magic numbers for ", 0, end)
    inside = [i for i, (a, b) in enumerate(offsets) if a >= start and b <= end and b > a]
    return inside[0], inside[-1]


def needle_retrieval_shares(model, tokenizer, records) -> dict:
    """Where the ROSA branches' retrieval points on NIAH records, teacher-forced (the prompt followed by the value):
    the share of (ROSA layer, route) destinations tau that fall in the needle's sentence at the position whose next
    token is the value's first (``first``: finding the needle from the question) and at the positions before the
    value's later tokens (``later``: copying it on), beside ``chance``, the sentence's share of the positions
    before the first, and ``none``, the share of tau = -1 at the first. ``model``: a ``RosaQwen3ForCausalLM``."""
    from rosa_lightning.modeling.model import attach_pipeline
    from rosa_lightning.retrieval.pipeline import RetrievalPipeline

    if not has_branches(model):
        raise ValueError("needle_retrieval_shares: the model has no ROSA branches to retrieve through (a global or "
                         "window model, a token-channel-only model, or rosa.runtime.enabled=false)")
    pipeline = RetrievalPipeline(1).start()
    recorder = TauRecorder(pipeline)
    attach_pipeline(model, recorder)
    first, later, chance, none = [], [], [], []
    try:
        model.eval()
        with torch.no_grad():
            for r in records:
                enc, value = answer_tokens(tokenizer, r, "needle_retrieval_shares")
                lo, hi = needle_sentence_tokens(r, enc["offset_mapping"])
                recorder.taus.clear()
                model(input_ids=torch.tensor(enc["input_ids"])[None])
                if not recorder.taus:
                    raise RuntimeError("needle_retrieval_shares: no ROSA branch retrieved in the forward")
                tau = torch.stack([recorder.taus[k][0] for k in sorted(recorder.taus)])  # [layers, R, T]
                inside = (tau >= lo) & (tau <= hi)
                at = value[0] - 1
                first.append(float(inside[:, :, at].float().mean()))
                none.append(float((tau[:, :, at] < 0).float().mean()))
                chance.append((hi - lo + 1) / at)
                if len(value) > 1:
                    later.append(float(inside[:, :, [v - 1 for v in value[1:]]].float().mean()))
    finally:
        attach_pipeline(model, None)
        pipeline.close()
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan
    return {"first": mean(first), "later": mean(later), "chance": mean(chance), "none": mean(none),
            "samples": len(records)}


def load_model(path: Path, window: int | None):
    """(causal LM, tokenizer) of a train.py run folder, of a merged ROSA directory (``model_type: rosa_qwen3``, e.g.
    the ``model/`` folder of a trained arm) or of a plain Qwen3 directory (module doc)."""
    import json
    import tempfile

    import hydra
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rosa_lightning  # noqa: F401  (registers the rosa_qwen3 auto classes)
    from experiments.harness import runs
    from experiments.retrofit_recovery.export_backbone import load_run_module

    path = Path(path)
    if not (path / "config.json").is_file():
        module, cfg = load_run_module(path, None if window is None else {"model.rosa.window": window})
        return module.model, hydra.utils.instantiate(cfg.data.source).tokenizer
    if json.loads((path / "config.json").read_text()).get("model_type") == "rosa_qwen3":
        if window is not None:
            raise SystemExit(f"--window: {path} is a ROSA model with its own window; leave --window out")
        return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    arm = ["retrofit_global"] if window is None else ["retrofit_window", f"model.rosa.window={window}"]
    with tempfile.TemporaryDirectory() as out:
        cfg = runs.compose(arm[0], [f"model.backbone={path.resolve()}", *arm[1:]], Path(out))
        return hydra.utils.instantiate(cfg.model).model, AutoTokenizer.from_pretrained(path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path,
                   help="a finished train.py run folder, a merged ROSA directory or a plain Qwen3 directory")
    p.add_argument("--length", type=int, default=512, help="RULER's max_seq_length of the samples")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=42, help="RULER's seed (the evaluation's default)")
    p.add_argument("--window", type=int, default=None,
                   help="score the run converted to this attention window (its global_layers stay global)")
    p.add_argument("--retrieval", action="store_true",
                   help="also report where the ROSA branches' retrieval points (needle_retrieval_shares)")
    a = p.parse_args(argv)
    from rosa_lightning.evaluation.niah import generate_niah

    model, tokenizer = load_model(a.model, a.window)
    records = generate_niah(tokenizer, a.length, a.samples, seed=a.seed)
    scores = niah_answer_scores(model, tokenizer, records)
    where = "ROSA" if has_branches(model) else "global" if a.window is None else f"window {a.window}"
    print(f"{a.model} ({where}): {scores['samples']} niah_single_1 samples at {a.length}; loss on the first value "
          f"token {scores['first']:.3f}, on the rest {scores['rest']:.3f} (uniform {math.log(len(tokenizer)):.2f}); "
          f"all value tokens argmax on {100 * scores['exact']:.0f} %")
    if a.retrieval:
        shares = needle_retrieval_shares(model, tokenizer, records)
        scores["retrieval"] = shares
        print(f"retrieval into the needle's sentence: {100 * shares['first']:.1f} % of (layer, route) before the "
              f"value's first token (chance {100 * shares['chance']:.1f} %, none {100 * shares['none']:.1f} %), "
              f"{100 * shares['later']:.1f} % before its later tokens")
    return scores


if __name__ == "__main__":
    main()
