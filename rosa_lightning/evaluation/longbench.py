"""LongBench v1 / LongBench-E scoring and configuration, by the rules of THUDM/LongBench's own code.

Per-sample scores equal those of the official ``LongBench/metrics.py`` and ``LongBench/eval.py``
(github.com/THUDM/LongBench): the same metric per dataset, the first-line rule for trec, triviaqa,
samsum and lsht, the maximum over the reference answers, and the libraries the official code scores
with (``rouge`` 1.0.1, ``fuzzywuzzy`` 0.18.0, ``jieba`` 0.42.1), imported on first use. The metric
functions themselves live in :mod:`rosa_lightning.evaluation.longbench_metrics`.

Dataset names are the 21 v1 datasets of :data:`LONGBENCH_DATASETS` or a LongBench-E file name
(``qasper_e``...). The official code scores and prompts a LongBench-E file exactly as its base
dataset (``pred.py`` writes ``pred_e/<model>/<base>.jsonl`` with the base dataset's prompt and
length; ``eval.py --e`` scores it under the base name), so every function here maps an ``_e`` name
to its base with :func:`base_dataset`.
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from numbers import Real

import numpy as np

from rosa_lightning.evaluation import longbench_metrics as _metrics

__all__ = [
    "LONGBENCH_DATASETS", "LONGBENCH_E_DATASETS", "FIRST_LINE_DATASETS", "CHAT_TEMPLATE_EXCLUDED",
    "CATEGORIES", "DATASET_CATEGORY", "CODE_BACKENDS", "LENGTH_BUCKETS",
    "base_dataset", "prompt_template", "max_new_tokens",
    "score_sample", "scorer", "scorer_e", "mean_score", "category_mean",
]

# The official order (pred.py's dataset list, also the order of the published tables).
LONGBENCH_DATASETS = (
    "narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh", "hotpotqa", "2wikimqa",
    "musique", "dureader", "gov_report", "qmsum", "multi_news", "vcsum", "trec", "triviaqa",
    "samsum", "lsht", "passage_count", "passage_retrieval_en", "passage_retrieval_zh", "lcc",
    "repobench-p",
)
# Base names of the 13 datasets that have a LongBench-E file ``<name>_e`` (pred.py's --e list).
LONGBENCH_E_DATASETS = (
    "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec",
    "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)
# Predictions on these are cut to their first line before scoring (eval.py).
FIRST_LINE_DATASETS = ("trec", "triviaqa", "samsum", "lsht")
# pred.py never wraps these prompts in a chat template ("chat models are better off without").
CHAT_TEMPLATE_EXCLUDED = ("trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p")

# Leaderboard categories, in the order of the LongBench README's per-dataset tables.
CATEGORIES = (
    "Single-Document QA", "Multi-Document QA", "Summarization", "Few-shot Learning",
    "Synthetic Tasks", "Code Completion",
)
DATASET_CATEGORY = {
    **dict.fromkeys(("narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh"), CATEGORIES[0]),
    **dict.fromkeys(("hotpotqa", "2wikimqa", "musique", "dureader"), CATEGORIES[1]),
    **dict.fromkeys(("gov_report", "qmsum", "multi_news", "vcsum"), CATEGORIES[2]),
    **dict.fromkeys(("trec", "triviaqa", "samsum", "lsht"), CATEGORIES[3]),
    **dict.fromkeys(("passage_count", "passage_retrieval_en", "passage_retrieval_zh"), CATEGORIES[4]),
    **dict.fromkeys(("lcc", "repobench-p"), CATEGORIES[5]),
}
CODE_BACKENDS = _metrics.CODE_BACKENDS
# LongBench-E buckets of the record's ``length`` field: [0, 4000), [4000, 8000), [8000, inf).
LENGTH_BUCKETS = ("0-4k", "4-8k", "8k+")

_METRICS = {
    **dict.fromkeys(("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
                     "triviaqa"), _metrics.qa_f1),
    "multifieldqa_zh": _metrics.qa_f1_zh,
    **dict.fromkeys(("gov_report", "qmsum", "multi_news", "samsum"), _metrics.rouge_l),
    **dict.fromkeys(("dureader", "vcsum"), _metrics.rouge_l_zh),
    **dict.fromkeys(("trec", "lsht"), _metrics.classification),
    "passage_count": _metrics.count,
    "passage_retrieval_en": _metrics.retrieval_en,
    "passage_retrieval_zh": _metrics.retrieval_zh,
    **dict.fromkeys(("lcc", "repobench-p"), _metrics.code_similarity),
}


def base_dataset(name: str) -> str:
    """The v1 dataset a LongBench or LongBench-E name is scored and prompted as.

    ``"qasper" -> "qasper"``, ``"qasper_e" -> "qasper"``. Raises ValueError for any other name
    (``"narrativeqa_e"`` included: narrativeqa has no LongBench-E file).
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset must be a str, got {type(name).__name__}")
    if name in LONGBENCH_DATASETS:
        return name
    if name.endswith("_e") and name[:-2] in LONGBENCH_E_DATASETS:
        return name[:-2]
    raise ValueError(
        f"unknown LongBench dataset {name!r}; expected one of {', '.join(LONGBENCH_DATASETS)} "
        f"or a LongBench-E name {', '.join(d + '_e' for d in LONGBENCH_E_DATASETS)}")


@functools.cache
def _config(filename: str) -> dict:
    """One of the shipped official configuration files (longbench_config/), read once."""
    path = resources.files("rosa_lightning.evaluation").joinpath("longbench_config", filename)
    return json.loads(path.read_text(encoding="utf-8"))


def prompt_template(dataset: str) -> str:
    """The official prompt template of ``dataset``, verbatim; fill it with ``template.format(**record)``."""
    return _config("dataset2prompt.json")[base_dataset(dataset)]


def max_new_tokens(dataset: str) -> int:
    """The official generation length of ``dataset`` (dataset2maxlen.json), in tokens."""
    return int(_config("dataset2maxlen.json")[base_dataset(dataset)])


def score_sample(dataset: str, prediction: str, answers: Sequence[str],
                 all_classes: Sequence[str] | None = None, *, code_backend: str = "difflib") -> float:
    """Official LongBench score of one prediction, in [0, 1].

    ``answers`` are the record's reference answers (the score is the maximum over them; an empty
    list scores 0, as in the official loop). ``all_classes`` is the record's class list, required
    for trec and lsht and ignored elsewhere. ``code_backend`` picks the string matcher of lcc and
    repobench-p: ``"difflib"`` (the official requirements, the default) or ``"levenshtein"``
    (python-Levenshtein, which fuzzywuzzy uses instead whenever it is installed).
    """
    base = base_dataset(dataset)
    _check_text("prediction", prediction)
    _check_texts("answers", answers)
    metric = _bound_metric(base, all_classes, code_backend)
    if base in FIRST_LINE_DATASETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    score = 0.0
    for answer in answers:
        score = max(score, metric(prediction, answer))
    return float(score)


def scorer(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
           all_classes: Sequence[str] | None = None, *, code_backend: str = "difflib") -> float:
    """Official dataset score: 100 x the mean per-sample score, Python ``round(..., 2)``.

    ``predictions[i]`` is scored against ``answers[i]`` (a list of references per sample).
    """
    _check_parallel(predictions, answers=answers)
    total = 0.0
    for prediction, refs in zip(predictions, answers):
        # Left-to-right addition as in the official loop: sum() compensates on Python >= 3.12 and
        # can differ in the last bit, which a round(..., 2) boundary can expose.
        total += score_sample(dataset, prediction, refs, all_classes, code_backend=code_backend)
    return round(100 * total / len(predictions), 2)


def scorer_e(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
             lengths: Sequence[Real], all_classes: Sequence[str] | None = None, *,
             code_backend: str = "difflib") -> dict[str, float]:
    """Official LongBench-E scores by length bucket: ``{"0-4k": s, "4-8k": s, "8k+": s}``.

    ``lengths[i]`` is record i's ``length`` field; a record goes to "0-4k" if it is below 4000,
    "4-8k" if below 8000, else "8k+". Each value is ``round(100 * np.mean(bucket), 2)`` as in
    the official code (numpy's mean and numpy's rounding), as a Python float; an empty bucket is
    NaN (the official code gets NaN there too, with a numpy warning that this function does not raise).
    """
    _check_parallel(predictions, answers=answers, lengths=lengths)
    buckets = {key: [] for key in LENGTH_BUCKETS}
    for prediction, refs, length in zip(predictions, answers, lengths):
        if isinstance(length, bool) or not isinstance(length, Real):
            raise TypeError(f"lengths must hold numbers (the records' length field), got {length!r}")
        key = LENGTH_BUCKETS[0 if length < 4000 else 1 if length < 8000 else 2]
        buckets[key].append(score_sample(dataset, prediction, refs, all_classes, code_backend=code_backend))
    return {key: float(round(100 * np.mean(values), 2)) if values else math.nan
            for key, values in buckets.items()}


def mean_score(scores: Mapping[str, float]) -> float:
    """Plain mean of the given scores (0-100), as the published ROSA table; ``round(..., 2)``.

    ``scores`` maps column names to scores: LongBench datasets (scorer's results) and, like the
    published table, other columns such as a RULER score. The sum is exact (math.fsum), so the
    result does not depend on the columns' order.
    """
    values = list(_checked_values(scores).values())
    return round(math.fsum(values) / len(values), 2)


def category_mean(scores: Mapping[str, float]) -> dict[str, float]:
    """Leaderboard aggregation: the mean score of each category present, and their mean.

    ``scores`` maps LongBench dataset names (v1 or LongBench-E, each base dataset at most once) to
    scores. Returns ``{category: mean, ..., "overall": mean of the category means}``, categories in
    :data:`CATEGORIES` order, only those with at least one dataset in ``scores``. Rounding: each
    category mean is computed from the given scores unrounded, "overall" from the unrounded category
    means, and every returned value is rounded once, with Python ``round(..., 2)``.
    """
    groups: dict[str, list[float]] = {}
    seen: dict[str, str] = {}
    for name, value in _checked_values(scores).items():
        base = base_dataset(name)
        if base in seen:
            raise ValueError(f"scores holds {base!r} twice: as {seen[base]!r} and as {name!r}")
        seen[base] = name
        groups.setdefault(DATASET_CATEGORY[base], []).append(value)
    means = {cat: math.fsum(groups[cat]) / len(groups[cat]) for cat in CATEGORIES if cat in groups}
    result = {cat: round(value, 2) for cat, value in means.items()}
    result["overall"] = round(math.fsum(means.values()) / len(means), 2)
    return result


def _bound_metric(base: str, all_classes, code_backend: str):
    """The metric of ``base`` as ``f(prediction, answer) -> float``, with its options checked."""
    if code_backend not in CODE_BACKENDS:
        raise ValueError(f"code_backend must be one of {CODE_BACKENDS}, got {code_backend!r}")
    metric = _METRICS[base]
    if metric is _metrics.classification:
        if all_classes is None:
            raise ValueError(f"{base} is scored against the record's class list: pass all_classes")
        _check_texts("all_classes", all_classes)
        return functools.partial(metric, all_classes=all_classes)
    if metric is _metrics.code_similarity:
        return functools.partial(metric, ratio=_metrics.fuzz_ratio(code_backend))
    return metric


def _checked_values(scores: Mapping[str, float]) -> dict[str, float]:
    """``scores`` as floats, checked: a non-empty mapping of str names to real, non-NaN numbers."""
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError(f"scores must be a non-empty mapping name -> score, got {scores!r}")
    checked = {}
    for name, value in scores.items():
        if not isinstance(name, str):
            raise TypeError(f"scores must be keyed by dataset name (str), got key {name!r}")
        if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
            raise ValueError(f"scores[{name!r}] must be a number (0-100), got {value!r}")
        checked[name] = float(value)
    return checked


def _check_text(what: str, value) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r}")


def _check_texts(what: str, values) -> None:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{what} must be a list of str (a record's field), got {type(values).__name__}: "
                        f"{values!r}")
    for value in values:
        _check_text(f"each item of {what}", value)


def _check_parallel(predictions, **others) -> None:
    """``predictions`` is a non-empty list of str and each of ``others`` has one item per prediction."""
    if isinstance(predictions, str) or not isinstance(predictions, Sequence) or not predictions:
        raise ValueError(f"predictions must be a non-empty list of str, got {predictions!r:.200}")
    for what, values in others.items():
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != len(predictions):
            count = len(values) if isinstance(values, Sequence) else type(values).__name__
            raise ValueError(f"{what} must have one item per prediction ({len(predictions)}), got {count}")
