"""Batched greedy generation over evaluation samples, appending each prediction to a jsonl file.

Samples are sorted by prompt length (longest first, so a batch that does not fit shows up at once and
the ETA errs on the safe side) and batched with left padding under a row and a token budget. Each batch
is one ``model.generate`` call: for a ROSA model one prefill of the ROSA generation cache, then one token
at a time. Predictions are the new tokens up to and including the first stop token, decoded with
``skip_special_tokens=True`` (the official ``pred.py`` decodes ``output[context_length:]`` of an unpadded
row, which ends at the first stop token).

With ``speculative`` (``generation.speculative`` in conf/eval.yaml) each batch is decoded by ROSA-native speculative
decoding instead (``rosa_lightning.modeling.generate.speculative_greedy``, docs/generation.md §8): the same greedy
tokens, rows one after the other, and the prefill / decode split from its own clock.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from rosa_lightning.modeling.generate import SpeculativeConfig, speculative_greedy


@dataclass
class Sample:
    """One generation job. ``key``: unique id within its prediction file; ``input_ids``: the prompt tokens;
    ``stop_ids``: stop tokens besides the model's EOS; ``min_new_tokens``: tokens generated before any stop;
    ``meta``: fields written to the prediction line (answers, all_classes, length, ...)."""

    key: str
    input_ids: list[int]
    max_new_tokens: int
    stop_ids: tuple[int, ...] = ()
    min_new_tokens: int = 0
    meta: dict = field(default_factory=dict)


@dataclass
class Throughput:
    """Token counts and seconds of prefill (prompt forward) and decode (the tokens after the first)."""

    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    samples: int = 0

    def add(self, other: "Throughput") -> None:
        for name in ("prefill_tokens", "prefill_s", "decode_tokens", "decode_s", "samples"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, float]:
        rate = lambda n, s: round(n / s, 1) if s > 0 else None  # noqa: E731
        return {"samples": self.samples, "prefill_tokens": self.prefill_tokens, "prefill_s": round(self.prefill_s, 3),
                "prefill_tokens_per_s": rate(self.prefill_tokens, self.prefill_s),
                "decode_tokens": self.decode_tokens, "decode_s": round(self.decode_s, 3),
                "decode_tokens_per_s": rate(self.decode_tokens, self.decode_s)}


class PredictionFile:
    """An append-only jsonl file of predictions, one line per finished sample, keyed by ``_id``.

    Lines are flushed and fsynced after every batch, so a killed evaluation loses at most the batch in
    flight. A last line cut off by a kill is removed when the file is opened again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data):  # a partial line written when the process was killed
            with open(self.path, "r+b") as f:
                f.truncate(good)
        for lineno, line in enumerate(data[:good].decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    self.rows[row["_id"]] = row
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{self.path}:{lineno}: not a prediction line of this evaluation "
                                     f"({exc}); move the file away to start over") from exc

    def append(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows[row["_id"]] = row
            f.flush()
            os.fsync(f.fileno())


class _FirstStepClock(LogitsProcessor):
    """Records when the first next-token scores arrive, i.e. when the prefill forward has finished."""

    def __init__(self) -> None:
        self.first: Optional[float] = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first is None:
            self.first = time.perf_counter()
        return scores


def batches(samples: list[Sample], batch_size: int, max_batch_tokens: int) -> Iterator[list[Sample]]:
    """Consecutive groups of ``samples`` (sorted longest first) with at most ``batch_size`` rows and at most
    ``max_batch_tokens`` padded prompt-plus-generation tokens (a longer single sample still gets a batch)."""
    ordered = sorted(samples, key=lambda s: -len(s.input_ids))
    group: list[Sample] = []
    for s in ordered:
        width = len(group[0].input_ids) + group[0].max_new_tokens if group else 0
        if group and (len(group) >= batch_size or (len(group) + 1) * width > max_batch_tokens):
            yield group
            group = []
        group.append(s)
    if group:
        yield group


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """The model's EOS ids (its generation config, else the tokenizer's EOS)."""
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


@torch.no_grad()
def generate_batch(model: torch.nn.Module, tokenizer: Any, group: list[Sample],
                   speculative: Optional[SpeculativeConfig] = None) -> tuple[list[list[int]], Throughput]:
    """Greedy completions (token ids up to and including the first stop) of one batch, and its timing
    (``speculative``: through speculative decoding, the same tokens)."""
    first = group[0]
    width = max(len(s.input_ids) for s in group)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(group), width), pad, dtype=torch.long)
    mask = torch.zeros((len(group), width), dtype=torch.long)
    for i, s in enumerate(group):
        ids[i, width - len(s.input_ids):] = torch.tensor(s.input_ids)
        mask[i, width - len(s.input_ids):] = 1
    stops = stop_token_ids(model, tokenizer)
    kwargs: dict[str, Any] = {}
    if first.stop_ids:  # the official samsum call: eos_token_id=[eos, "\n"], min_length=context_length + 1
        kwargs["eos_token_id"] = sorted(stops | set(first.stop_ids))
    if first.min_new_tokens:
        kwargs["min_new_tokens"] = first.min_new_tokens
    if speculative is not None:
        return _generate_speculative(model, ids, mask, group, stops, kwargs, speculative, pad)
    clock = _FirstStepClock()
    start = time.perf_counter()
    out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=False,
                         num_beams=1, max_new_tokens=first.max_new_tokens, pad_token_id=pad,
                         logits_processor=LogitsProcessorList([clock]), **kwargs)
    end = time.perf_counter()
    stops |= set(first.stop_ids)
    completions = [_cut(row.tolist(), stops) for row in out[:, width:].cpu()]
    prefill_end = clock.first if clock.first is not None else end
    timing = Throughput(prefill_tokens=int(mask.sum()), prefill_s=prefill_end - start,
                        decode_tokens=sum(max(len(c) - 1, 0) for c in completions), decode_s=end - prefill_end,
                        samples=len(group))
    return completions, timing


def _generate_speculative(model, ids, mask, group, stops, kwargs, spec: SpeculativeConfig,
                          pad) -> tuple[list[list[int]], Throughput]:
    first = group[0]
    width = ids.shape[1]
    start = time.perf_counter()
    out = speculative_greedy(model, ids.to(model.device), mask.to(model.device), max_new_tokens=first.max_new_tokens,
                             eos_token_id=kwargs.get("eos_token_id", sorted(stops)), pad_token_id=pad,
                             num_draft=spec.num_draft, min_match=spec.min_match,
                             min_new_tokens=kwargs.get("min_new_tokens", 0))
    end = time.perf_counter()
    stops = stops | set(first.stop_ids)
    completions = [_cut(row.tolist(), stops) for row in out.sequences[:, width:].cpu()]
    decode_s = out.stats.decode_s
    timing = Throughput(prefill_tokens=int(mask.sum()), prefill_s=end - start - decode_s,
                        decode_tokens=sum(max(len(c) - 1, 0) for c in completions), decode_s=decode_s,
                        samples=len(group))
    return completions, timing


def _cut(tokens: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i + 1]
    return tokens


def predict(model: torch.nn.Module, tokenizer: Any, samples: list[Sample], *, batch_size: int,
            max_batch_tokens: int) -> dict[str, str]:
    """Greedy predictions of ``samples`` (batched as ``run_samples`` batches them, nothing written), by sample key."""
    preds: dict[str, str] = {}
    for group in batches(samples, batch_size, max_batch_tokens):
        completions, _ = generate_batch(model, tokenizer, group)
        preds.update((s.key, tokenizer.decode(c, skip_special_tokens=True)) for s, c in zip(group, completions))
    return preds


def run_samples(model: torch.nn.Module, tokenizer: Any, samples: list[Sample], out: PredictionFile,
                make_row: Callable[[Sample, str], dict], *, batch_size: int, max_batch_tokens: int,
                desc: str, speculative: Optional[SpeculativeConfig] = None) -> Throughput:
    """Generate every sample not yet in ``out`` and append ``make_row(sample, prediction)`` for each."""
    todo = [s for s in samples if s.key not in out.rows]
    total = Throughput()
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=desc, unit="sample", dynamic_ncols=True,
               leave=True)
    try:
        for group in batches(todo, batch_size, max_batch_tokens):
            completions, timing = generate_batch(model, tokenizer, group, speculative)
            out.append([make_row(s, tokenizer.decode(c, skip_special_tokens=True)) for s, c in zip(group, completions)])
            total.add(timing)
            bar.update(len(group))
            if total.prefill_s > 0:
                bar.set_postfix_str(f"prefill {total.prefill_tokens / total.prefill_s:,.0f} tok/s", refresh=False)
    finally:
        bar.close()
    return total
