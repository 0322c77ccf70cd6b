"""LongBench v1 per-answer metrics, equal to the official ``LongBench/metrics.py`` (THUDM/LongBench).

Each metric is ``f(prediction: str, answer: str, ...) -> float`` in [0, 1] for one reference answer;
:mod:`rosa_lightning.evaluation.longbench` applies the first-line rule and the maximum over answers.
ROUGE, word segmentation and the code similarity go through the libraries the official code uses
(``rouge``, ``jieba``, ``fuzzywuzzy``); they are imported on first use, so importing this module is
cheap. Arithmetic is written in the official order of operations so that floats match bit for bit.
"""
from __future__ import annotations

import _thread
import functools
import re
import string
import sys
from collections import Counter

CODE_BACKENDS = ("difflib", "levenshtein")

# The official normalize_zh_answer's Chinese punctuation (benchmark data, kept verbatim).
_ZH_PUNCTUATION = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
_EN_PUNCTUATION = frozenset(string.punctuation)
_ALL_PUNCTUATION = frozenset(string.punctuation + _ZH_PUNCTUATION)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")  # str pattern: \d also matches non-ASCII digits, as in the official code

# Depth of the frame that calls Rouge.get_scores in ``python eval.py`` (module -> scorer ->
# rouge_score, one more for rouge_zh_score). Deep LCS reconstructions in ``rouge`` recurse once per
# word of a sentence pair and hit Python's recursion limit near 990 words; the official code then
# scores 0. Calling at this fixed depth reproduces that boundary wherever the caller sits.
_OFFICIAL_ROUGE_CALLER_DEPTH = {"en": 3, "zh": 4}


def normalize_en(text: str) -> str:
    """Lowercase, drop ASCII punctuation, replace the articles a/an/the by spaces, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _EN_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize_zh(text: str) -> str:
    """Lowercase, drop ASCII and Chinese punctuation, remove all whitespace."""
    return "".join("".join(ch for ch in text.lower() if ch not in _ALL_PUNCTUATION).split())


def token_f1(prediction: list[str], answer: list[str]) -> float:
    """F1 of the multiset overlap of two token lists (0 when nothing is shared)."""
    num_same = sum((Counter(prediction) & Counter(answer)).values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(prediction)
    recall = 1.0 * num_same / len(answer)
    return (2 * precision * recall) / (precision + recall)


def qa_f1(prediction: str, answer: str) -> float:
    """Token F1 after English normalisation (SQuAD style)."""
    return token_f1(normalize_en(prediction).split(), normalize_en(answer).split())


def qa_f1_zh(prediction: str, answer: str) -> float:
    """Token F1 over jieba words, each normalised by :func:`normalize_zh`, empty ones dropped."""
    def words(text: str) -> list[str]:
        return [w for w in (normalize_zh(t) for t in _jieba().cut(text, cut_all=False)) if w]
    return token_f1(words(prediction), words(answer))


def rouge_l(prediction: str, answer: str, language: str = "en") -> float:
    """ROUGE-L F of the ``rouge`` package (sentences split at "."), 0 where it raises.

    The official code catches every exception of ``Rouge.get_scores`` and scores 0: an empty
    hypothesis or reference after splitting at "." (ValueError) and too deep an LCS
    reconstruction (RecursionError, see ``_OFFICIAL_ROUGE_CALLER_DEPTH``).
    """
    scores = _at_depth(_OFFICIAL_ROUGE_CALLER_DEPTH[language], _rouge_avg_scores, prediction, answer)
    return 0.0 if isinstance(scores, Exception) else scores["rouge-l"]["f"]


def rouge_l_zh(prediction: str, answer: str) -> float:
    """:func:`rouge_l` over jieba words joined by spaces."""
    segment = _jieba().cut
    return rouge_l(" ".join(segment(prediction, cut_all=False)),
                   " ".join(segment(answer, cut_all=False)), language="zh")


def classification(prediction: str, answer: str, all_classes) -> float:
    """1/k if ``answer`` is among the k classes named in ``prediction``, else 0.

    A class is named if it is a substring of the prediction; classes that are substrings of the
    answer (but not the answer) are then discarded. The official code discards them while
    iterating over the same list, so the item right after each discarded one is never examined;
    the explicit index walk below keeps that behaviour (it decides scores such as 1/2 vs 1).
    """
    named = [name for name in all_classes if name in prediction]
    i = 0
    while i < len(named):
        term = named[i]
        if term in answer and term != answer:
            named.remove(term)
        i += 1
    return 1.0 / len(named) if answer in named else 0.0


def count(prediction: str, answer: str) -> float:
    """Share of the numbers in ``prediction`` that equal ``answer`` (passage_count)."""
    return _number_share(prediction, str(answer))


def retrieval_en(prediction: str, answer: str) -> float:
    """Share of the numbers in ``prediction`` that equal N of the answer "Paragraph N"."""
    return _number_share(prediction, _paragraph_id(answer, r"Paragraph (\d+)", "Paragraph N"))


def retrieval_zh(prediction: str, answer: str) -> float:
    """Share of the numbers in ``prediction`` that equal N of the answer "段落N"."""
    return _number_share(prediction, _paragraph_id(answer, r"段落(\d+)", "段落N"))


def code_similarity(prediction: str, answer: str, ratio) -> float:
    """``ratio(line, answer) / 100`` for the first line of ``prediction`` with no "`", "#" or "//".

    Leading newlines are stripped first; with no such line the empty string is compared.
    ``ratio`` is :func:`fuzz_ratio`'s result.
    """
    line = next((ln for ln in prediction.lstrip("\n").split("\n")
                 if "`" not in ln and "#" not in ln and "//" not in ln), "")
    return ratio(line, answer) / 100


def fuzz_ratio(backend: str = "difflib"):
    """fuzzywuzzy 0.18.0's ``fuzz.ratio`` with an explicit matcher: ``f(s1, s2) -> int`` in 0..100.

    fuzzywuzzy picks python-Levenshtein silently whenever it is importable, and the two matchers
    give different lcc/repobench-p scores; so ``fuzz`` itself is never imported here (nor its
    "slow pure-python SequenceMatcher" warning raised). The result keeps fuzz.ratio's wrappers
    (None -> 0, equal strings -> 100, an empty string -> 0) and its rounding, around
    ``difflib.SequenceMatcher`` (the official requirements, no python-Levenshtein) or fuzzywuzzy's
    python-Levenshtein ``StringMatcher``.
    """
    from fuzzywuzzy import utils

    if backend == "difflib":
        from difflib import SequenceMatcher as matcher
    elif backend == "levenshtein":
        try:
            from fuzzywuzzy.StringMatcher import StringMatcher as matcher
        except ImportError as exc:
            raise ImportError("code_backend='levenshtein' needs python-Levenshtein "
                              "(pip install python-Levenshtein); or use code_backend='difflib'") from exc
    else:
        raise ValueError(f"code_backend must be one of {CODE_BACKENDS}, got {backend!r}")

    @utils.check_for_none
    @utils.check_for_equivalence
    @utils.check_empty_string
    def ratio(s1, s2):
        s1, s2 = utils.make_type_consistent(s1, s2)
        return utils.intr(100 * matcher(None, s1, s2).ratio())
    return ratio


def _number_share(prediction: str, target: str) -> float:
    numbers = _NUMBER.findall(prediction)
    return 0.0 if not numbers else sum(n == target for n in numbers) / len(numbers)


def _paragraph_id(answer: str, pattern: str, form: str) -> str:
    match = re.search(pattern, answer)
    if match is None:
        raise ValueError(f"a retrieval answer must contain {form!r} (N = the paragraph number), "
                         f"got {answer!r}")
    return match.group(1)


@functools.cache
def _jieba():
    """A private jieba tokenizer on the default dictionary, loaded on first use.

    Private so that words another component adds to jieba's global tokenizer do not change scores.
    """
    import jieba

    return jieba.Tokenizer()


def _rouge_avg_scores(prediction: str, answer: str) -> dict:
    from rouge import Rouge

    return Rouge().get_scores([prediction], [answer], avg=True)


def _at_depth(depth: int, fn, *args):
    """``fn(*args)`` run in a new thread with ``fn``'s frame ``depth`` deep (at least 3); its result
    or the Exception it raised.

    A new thread's stack starts empty, so the recursion budget left to ``fn`` is the same on
    every call, as in the official script, whatever the caller's own stack depth.
    """
    done = _thread.allocate_lock()
    done.acquire()
    box = []

    def entry():
        try:
            box.append(_descend(depth, fn, args))
        except Exception as exc:  # returned to the caller, which decides (rouge: score 0)
            box.append(exc)
        finally:
            done.release()

    _thread.start_new_thread(entry, ())
    done.acquire()
    return box[0]


def _descend(depth: int, fn, args):
    """Recurse until this frame is ``depth - 1`` deep on the thread's stack, then call ``fn``."""
    frame, current = sys._getframe(), 0
    while frame is not None:
        current, frame = current + 1, frame.f_back
    if current < depth - 1:
        return _descend(depth, fn, args)
    return fn(*args)
