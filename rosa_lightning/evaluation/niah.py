"""RULER ``niah_single_1`` (one needle in a noise haystack), generated locally by RULER's rules, and its metric.

Generation follows NVIDIA/RULER: ``scripts/data/prepare.py`` with template type ``base`` calling
``scripts/data/synthetic/niah.py`` with the ``niah_single_1`` arguments of ``scripts/synthetic.yaml``.
The strings it uses ship verbatim in ``data/ruler/niah_single_1.json`` (Apache-2.0, see the NOTICE there).

* Prompt: ``Templates['base']`` around the niah template, then the answer prefix, rewritten into the
  singular as RULER does for one needle and one query ("A special magic number is hidden within ...
  The special magic number for {key} mentioned in the provided text is"). The context is the noise
  sentence once per line, with the needle "One of the special magic numbers for {key} is: {value}."
  inserted before a uniformly drawn line, so it sits at 0-based line ``needle_line`` of
  ``num_haystack + 1`` lines (never the last).
* Key: ``random.choice`` over RULER's sorted adjective-noun pairs (:mod:`.ruler_words`); value: a uniform
  7-digit number. The answer is the value.
* Size: RULER's search. The tokens per line are estimated from a 25-line prompt (5 lines when
  ``max_seq_length < 4096``), then a binary search between 25 lines and three times the estimate finds
  the largest number of lines whose prompt plus ``tokens_to_generate`` fits ``max_seq_length``. Each
  sample starts at that size and, while its own prompt does not fit (its key can take more tokens than
  the keys drawn during the search), is drawn again 25 lines smaller, as RULER does. A sample can thus
  have a few tokens of room, and rarely room for a line more, when its key is shorter than the one that
  rejected the next size during the search.
* Random state: one ``random.Random(seed)`` consumed in RULER's order (RULER seeds the global ``random``
  with the same seed): the search's draws, then every sample's draws including its redraws. With the
  same tokenizer the prompts, answers and needle lines therefore equal RULER's.

Token counts are RULER's: ``len(tokenizer.tokenize(prompt))``, without special tokens. RULER's HF and
vLLM backends then feed ``tokenizer(prompt)`` with the tokenizer's default special tokens, so a tokenizer
that adds a BOS feeds ``length + 1`` tokens (Qwen tokenizers add none). A harness should tokenise
``input`` as is, with the default ``add_special_tokens=True``, as RULER does.

The count is the sum over the prompt's lines (head, each haystack line with its newline, question),
which equals the count of the whole prompt for tokenizers whose pre-tokenizer cuts after these newlines
(byte-level BPEs such as Qwen's, GPT-2's). That is checked on whole prompts (a short one before, the
first and last samples after); a tokenizer that fails the check gets every prompt counted whole, as
RULER counts them (slower at long lengths), with a warning.

Where the samples cannot equal RULER's: RULER's ``length`` field adds ``tokens_to_generate`` (``length``
here is the prompt alone); RULER stores the prompt without its answer prefix and appends it when
predicting (``input`` here is the whole prompt); where even RULER's smallest haystack does not fit,
RULER never finishes, here a ValueError; the word lists are wonderwords 2.2.0's, which RULER's published
data used, while a RULER installed today gets wonderwords 3.0.1, whose noun list lacks four words and so
draws other keys; and the stream of random numbers is CPython's (``random.choice``, ``randint``,
``sample``), the same for RULER only on a CPython with the same ``random`` algorithms.

Scoring is RULER's ``string_match_all`` after RULER's ``postprocess_pred``.
"""
from __future__ import annotations

import functools
import json
import random
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Sequence

from rosa_lightning.evaluation.ruler_words import ruler_keys

TASK = "niah_single_1"
_CONTEXT_MARK = "\x00context\x00"  # stands in for {context} to split the prompt around it
_MAX_SMALLEST_REDRAWS = 1000  # RULER redraws forever at its smallest size; stop and explain instead


@functools.lru_cache(maxsize=1)
def ruler_config() -> dict:
    """The RULER strings and arguments of ``niah_single_1`` (``data/ruler/niah_single_1.json``)."""
    path = resources.files("rosa_lightning.evaluation").joinpath("data", "ruler", "niah_single_1.json")
    with path.open("r", encoding="utf-8") as f:
        return json.load(f)


def prompt_template() -> str:
    """RULER's prompt for one needle and one query, with ``{type_needle_v}``, ``{context}``, ``{query}``.

    prepare.py appends the answer prefix to the base model template around the task template; niah.py
    then rewrites the plural phrasing into the singular with these four replacements, in this order.
    """
    cfg = ruler_config()
    template = cfg["model_template_base"].format(task_template=cfg["template"]) + cfg["answer_prefix"]
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        template = template.replace(old, new)
    return template


def prompt_parts(key: str) -> tuple[str, str]:
    """The prompt before and after the context for ``key``: ``(head, question)``."""
    text = prompt_template().format(type_needle_v="number", context=_CONTEXT_MARK, query=key)
    head, question = text.split(_CONTEXT_MARK)
    return head, question


def needle_text(key: str, value: str) -> str:
    """The needle sentence; RULER formats it before the singular rewrite, so it says "numbers"."""
    return ruler_config()["needle"].format(type_needle_v="numbers", key=key, value=value)


@dataclass(frozen=True)
class _Draw:
    """One prompt: ``lines`` noise lines with the needle for ``key``/``value`` inserted as context line ``line``
    (0-based, ``0 <= line < lines``, as RULER's ``list.insert``)."""
    key: str
    value: str
    line: int
    lines: int

    def context(self) -> str:
        noise = ruler_config()["noise_haystack"]
        return (noise + "\n") * self.line + needle_text(self.key, self.value) + ("\n" + noise) * (self.lines - self.line)

    def prompt(self) -> str:
        head, question = prompt_parts(self.key)
        return head + self.context() + question


def _draw(rng: random.Random, keys: Sequence[str], lines: int) -> _Draw:
    """One call of RULER's ``generate_input_output`` for niah_single_1, consuming ``rng`` in its order."""
    key = rng.choice(keys)
    value = str(rng.randint(10 ** 6, 10 ** 7 - 1))
    # RULER shuffles the needles with a fresh random.Random(seed): one needle, nothing drawn here.
    line = rng.sample(range(lines), 1)[0]
    rng.sample(range(1), 1)  # RULER picks which of its one key(s) to ask about; it still draws bits
    return _Draw(key, value, line, lines)


def _token_counter(tokenizer) -> Callable[[str], int]:
    tokenize = getattr(tokenizer, "tokenize", None)
    if not callable(tokenize):
        raise TypeError(f"tokenizer must be a Hugging Face tokenizer with .tokenize(text), got {type(tokenizer).__name__}")
    return lambda text: len(tokenize(text))


class _WholeCount:
    """Reference: RULER's count, the whole prompt tokenised."""

    def __init__(self, tokenizer):
        self.text = _token_counter(tokenizer)

    def __call__(self, d: _Draw) -> int:
        return self.text(d.prompt())


class _LineSumCount:
    """Fast: head + lines x noise line + needle line + question, each tokenised alone (see module doc)."""

    def __init__(self, tokenizer):
        self._n = _token_counter(tokenizer)
        head, question = prompt_parts("key")
        if not head.endswith("\n") or not question.startswith("\n"):
            raise AssertionError("RULER's niah template puts the context on lines of its own")
        self._head = self._n(head)
        self._noise = self._n(ruler_config()["noise_haystack"] + "\n")

    def __call__(self, d: _Draw) -> int:
        question = prompt_parts(d.key)[1][1:]  # its leading newline ends the last haystack line
        return self._head + d.lines * self._noise + self._n(needle_text(d.key, d.value) + "\n") + self._n(question)


def _search_step(max_seq_length: int) -> int:
    """RULER's haystack increment for the noise haystack: 25 lines, 5 below 4096 tokens."""
    return 5 if max_seq_length < 4096 else 25


def _haystack_size(rng: random.Random, count, max_seq_length: int, tokens_to_generate: int) -> int:
    """RULER's binary search for the number of noise lines (``generate_samples`` before its sample loop)."""
    keys, step = ruler_keys(), _search_step(max_seq_length)
    probe = _draw(rng, keys, step)
    probe_tokens = count(probe)
    tokens_per_line = probe_tokens / step
    low, high = step, max(int((max_seq_length / tokens_per_line) * 3), step * 2)
    best = None
    while low <= high:
        mid = (low + high) // 2
        if count(_draw(rng, keys, mid)) + tokens_to_generate <= max_seq_length:
            best, low = mid, mid + 1
        else:
            high = mid - 1
    if best is None:
        fixed = count(_Draw(probe.key, probe.value, 0, 0))
        raise ValueError(
            f"max_seq_length={max_seq_length} is too small for {TASK} with this tokenizer: the template and "
            f"needle take {fixed} tokens, RULER's smallest haystack ({step} lines) {probe_tokens - fixed} more "
            f"and tokens_to_generate={tokens_to_generate}; about {probe_tokens + tokens_to_generate} are needed")
    return best


def _draw_sample(rng: random.Random, count, lines: int, max_seq_length: int, tokens_to_generate: int):
    """One sample as RULER's sample loop draws it: redraw, ``step`` lines smaller, while it does not fit.
    Returns ``(draw, prompt tokens)``."""
    keys, step = ruler_keys(), _search_step(max_seq_length)
    for _ in range(_MAX_SMALLEST_REDRAWS):
        d = _draw(rng, keys, lines)
        length = count(d)
        if length + tokens_to_generate <= max_seq_length:
            return d, length
        if lines > step:
            lines -= step
    raise ValueError(f"max_seq_length={max_seq_length}: {_MAX_SMALLEST_REDRAWS} draws at {lines} haystack lines "
                     f"did not fit with tokens_to_generate={tokens_to_generate}; raise max_seq_length")


def _generate(count, max_seq_length: int, num_samples: int, seed: int, tokens_to_generate: int) -> list[dict]:
    rng = random.Random(seed)
    lines = _haystack_size(rng, count, max_seq_length, tokens_to_generate)
    records = []
    for index in range(num_samples):
        d, length = _draw_sample(rng, count, lines, max_seq_length, tokens_to_generate)
        records.append({
            "_id": f"{TASK}-{max_seq_length}-{seed}-{index}", "index": index, "dataset": TASK,
            "input": d.prompt(), "answers": [d.value], "key": d.key, "length": length,
            "max_new_tokens": tokens_to_generate, "needle_line": d.line, "num_haystack": d.lines,
            "max_seq_length": max_seq_length,
        })
    return records


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def generate_niah(tokenizer, max_seq_length: int, num_samples: int = 500, seed: int = 42,
                  tokens_to_generate: int = 128) -> list[dict]:
    """``num_samples`` RULER niah_single_1 samples for ``tokenizer`` at ``max_seq_length`` (module doc).

    Each record: ``_id`` ("niah_single_1-<max_seq_length>-<seed>-<index>"), ``index``, ``dataset``,
    ``input`` (the whole prompt, answer prefix included; tokenise it as is with the tokenizer's default
    special tokens), ``answers`` ([the 7-digit value]), ``key``, ``length`` (prompt tokens by
    ``tokenizer.tokenize``, special tokens not counted; ``length + max_new_tokens <= max_seq_length``),
    ``max_new_tokens``, ``needle_line`` (0-based line of the needle in the context), ``num_haystack``
    (noise lines) and ``max_seq_length``. Raises ValueError when ``max_seq_length`` cannot hold the
    template, the needle, RULER's smallest haystack and ``tokens_to_generate``.
    """
    _check_int("max_seq_length", max_seq_length, 1)
    _check_int("num_samples", num_samples, 1)
    _check_int("seed", seed, 0)
    _check_int("tokens_to_generate", tokens_to_generate, 0)
    whole, line_sum = _WholeCount(tokenizer), _LineSumCount(tokenizer)
    check = _Draw("small-check", "1234567", 1, 3)
    if whole(check) == line_sum(check):
        records = _generate(line_sum, max_seq_length, num_samples, seed, tokens_to_generate)
        if all(whole.text(r["input"]) == r["length"] for r in (records[0], records[-1])):
            return records
    warnings.warn(f"{type(tokenizer).__name__} does not tokenise the niah prompt line by line; counting every "
                  "prompt whole, as RULER does (slower at long lengths)", stacklevel=2)
    return _generate(whole, max_seq_length, num_samples, seed, tokens_to_generate)


def postprocess_prediction(prediction: str) -> str:
    """RULER's ``postprocess_pred``: strip, turn every control character (``\\x00``-``\\x1f``) into a
    newline, strip again."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def _check_answers(answers) -> None:
    if isinstance(answers, str) or not isinstance(answers, Sequence) or len(answers) == 0:
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}")
    if not all(isinstance(a, str) for a in answers):
        raise ValueError(f"answers must hold strings only, got {answers!r}")


def score_niah_sample(prediction: str, answers: Sequence[str]) -> float:
    """RULER's string_match_all for one sample, in [0, 1]: the share of ``answers`` that occur,
    case-insensitively, as substrings of the post-processed prediction."""
    if not isinstance(prediction, str):
        raise ValueError(f"prediction must be a string, got {type(prediction).__name__}")
    _check_answers(answers)
    pred = postprocess_prediction(prediction).lower()
    return sum([1.0 if a.lower() in pred else 0.0 for a in answers]) / len(answers)


def score_niah(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """RULER's niah score (string_match_all) in [0, 100], rounded to 2 decimals as RULER rounds it."""
    if isinstance(predictions, str) or len(predictions) == 0 or len(predictions) != len(answers):
        raise ValueError(f"predictions and answers must be non-empty lists of equal length, got "
                         f"{len(predictions)} predictions and {len(answers)} answer lists")
    total = sum([score_niah_sample(p, a) for p, a in zip(predictions, answers)])
    return round(total / len(predictions) * 100, 2)
