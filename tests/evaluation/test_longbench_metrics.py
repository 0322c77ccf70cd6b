"""LongBench v1 / LongBench-E scoring: the public vectors exactly, and hand cases for every metric.

Expected values of the hand cases were computed by running the unmodified official
``LongBench/eval.py`` + ``metrics.py`` (THUDM/LongBench 2e00731) with rouge 1.0.1, fuzzywuzzy 0.18.0
and jieba 0.42.1; those marked difflib without python-Levenshtein importable.
"""
import hashlib
import json
import math
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rosa_lightning.evaluation import longbench as lb
from rosa_lightning.evaluation import longbench_metrics

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "longbench_metric_vectors_public.json")
                     .read_text(encoding="utf-8"))["cases"]
CONFIG_DIR = Path(lb.__file__).with_name("longbench_config")
A_B_AB = ["A", "B", "AB"]
LONG_CODE_A = "result = " + " + ".join(f"values[{i}]" for i in range(30))
LONG_CODE_B = "result = " + " + ".join(f"values[{i}]" for i in range(1, 31))


@pytest.mark.parametrize("case", VECTORS, ids=[c["id"] for c in VECTORS])
def test_public_vectors_exact(case):
    args = (case["dataset"], case["prediction"], case["answers"], case["all_classes"])
    assert lb.score_sample(*args) == case["score"]
    if "score_python_levenshtein" in case:
        assert lb.score_sample(*args, code_backend="levenshtein") == case["score_python_levenshtein"]


HAND_CASES = [
    # token F1 (English): empty, articles only, punctuation
    ("qasper", "", ["x"], None, 0.0),
    ("qasper", "", [""], None, 0.0),
    ("narrativeqa", "the a an", ["the dog"], None, 0.0),
    ("hotpotqa", "Paris, France.", ["paris"], None, 0.6666666666666666),
    ("triviaqa", "\n\nParis\nFrance", ["Paris"], None, 1.0),  # first line after leading newlines
    # token F1 over jieba words
    ("multifieldqa_zh", "他出生于北京", ["北京"], None, 0.5),
    ("multifieldqa_zh", "", ["北京"], None, 0.0),
    ("multifieldqa_zh", "。，", ["北京"], None, 0.0),
    ("multifieldqa_zh", "Beijing 北京", ["beijing"], None, 0.6666666666666666),
    # classification: the skipped item after a removal decides 1/2 instead of 1
    ("trec", "AB", ["AB"], A_B_AB, 0.5),
    ("trec", "B AB", ["AB"], A_B_AB, 0.5),
    ("trec", "AB", ["B"], A_B_AB, 0.3333333333333333),
    ("trec", "C", ["AB"], A_B_AB, 0.0),
    ("trec", "\nA\nAB", ["A"], A_B_AB, 1.0),
    ("trec", "AB A", ["A"], ["AB", "A", "B"], 0.3333333333333333),
    ("lsht", "体育、教育", ["教育"], ["体育", "教育", "军事"], 0.5),
    # numbers
    ("passage_count", "There are 5 paragraphs, 5 unique", ["5"], None, 1.0),
    ("passage_count", "5 of 10", ["5"], None, 0.5),
    ("passage_count", "１２", ["12"], None, 0.0),  # full-width digits are numbers, but not "12"
    ("passage_count", "no numbers", ["0"], None, 0.0),
    ("passage_retrieval_en", "paragraph 7", ["Paragraph 7"], None, 1.0),
    ("passage_retrieval_en", "Paragraph 10", ["Paragraph 1"], None, 0.0),
    ("passage_retrieval_en", "The answer is Paragraph 3, not 30.", ["Paragraph 3"], None, 0.5),
    ("passage_retrieval_zh", "答案是段落3", ["段落3"], None, 1.0),
    ("passage_retrieval_zh", "Paragraph 3", ["段落3"], None, 1.0),
    # code: first line without ` # //, leading newlines stripped; "" vs "" is equal strings -> 100
    ("lcc", "```python\n    x = 1\n```", ["    x = 1"], None, 1.0),
    ("lcc", "# c\n// d\nreturn 1", ["return 1"], None, 1.0),
    ("lcc", "# only\n// comments", ["return 1"], None, 0.0),
    ("lcc", "# only", [""], None, 1.0),
    ("lcc", "", [""], None, 1.0),
    ("lcc", "\n\n#x\ny", ["y"], None, 1.0),
    # rouge: an empty side after splitting at "." raises inside rouge and scores 0
    ("gov_report", "", ["A report."], None, 0.0),
    ("gov_report", "...", ["A report."], None, 0.0),
    ("gov_report", "A report.", [""], None, 0.0),
    ("gov_report", " ", ["A report."], None, 0.0),
    ("gov_report", " ", [" "], None, 0.999999995),
    ("samsum", "\nTom will come.\nDialogue: x", ["Tom will come at 8."], None, 0.7499999953125),
    ("qmsum", "Tom will come. Lisa stays", ["Lisa stays. Tom will come."], None, 0.999999995),
    ("vcsum", "", ["会议讨论了预算。"], None, 0.0),
    ("vcsum", "会议讨论了预算", ["会议讨论了预算。"], None, 0.8888888839506174),
    ("dureader", "。", ["会议"], None, 0.0),
]


@pytest.mark.parametrize("dataset, prediction, answers, all_classes, expected", HAND_CASES)
def test_hand_cases(dataset, prediction, answers, all_classes, expected):
    assert lb.score_sample(dataset, prediction, answers, all_classes) == expected


@pytest.mark.parametrize("prediction, answer, difflib_score, levenshtein_score", [
    ("(aa self=b", "x,a1ab(1", 0.11, 0.33),
    (LONG_CODE_A, LONG_CODE_B, 0.55, 0.97),  # >= 200 characters: difflib's autojunk heuristic
])
def test_code_backends_differ_and_difflib_is_default(prediction, answer, difflib_score, levenshtein_score):
    import Levenshtein  # noqa: F401  (installed by the test extra: the default must not pick it up)

    assert lb.score_sample("lcc", prediction, [answer]) == difflib_score
    assert lb.score_sample("repobench-p", prediction, [answer], code_backend="difflib") == difflib_score
    assert lb.score_sample("lcc", prediction, [answer], code_backend="levenshtein") == levenshtein_score


def _fuzz():
    with warnings.catch_warnings():  # only where python-Levenshtein is absent
        warnings.filterwarnings("ignore", message="Using slow pure-python SequenceMatcher",
                                category=UserWarning)
        from fuzzywuzzy import fuzz
    return fuzz


def test_fuzz_ratio_equals_fuzzywuzzy_on_each_matcher(monkeypatch):
    import difflib

    from fuzzywuzzy.StringMatcher import StringMatcher

    fuzz, rng = _fuzz(), random.Random(0)
    pieces = ["self", ".", "x", " = ", "(", ")", "    ", "return", ",", "a", "1", "é"]
    def text():
        return "".join(rng.choices(pieces, k=rng.randint(0, 9)))
    pairs = [(text(), text()) for _ in range(300)] + [(LONG_CODE_A, LONG_CODE_B), ("", ""), ("x", "x")]
    for matcher, backend in ((StringMatcher, "levenshtein"), (difflib.SequenceMatcher, "difflib")):
        monkeypatch.setattr(fuzz, "SequenceMatcher", matcher)
        ours = longbench_metrics.fuzz_ratio(backend)
        assert [ours(a, b) for a, b in pairs] == [fuzz.ratio(a, b) for a, b in pairs]


def test_levenshtein_backend_fails_clearly_when_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "Levenshtein", None)  # makes `import Levenshtein` fail
    monkeypatch.delitem(sys.modules, "fuzzywuzzy.StringMatcher", raising=False)
    with pytest.raises(ImportError, match="python-Levenshtein"):
        lb.score_sample("lcc", "x = 1", ["x = 2"], code_backend="levenshtein")
    assert lb.score_sample("lcc", "x = 1", ["x = 2"]) == 0.8  # difflib needs nothing more


def _words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def _nested(depth: int, fn):
    return fn() if depth == 0 else _nested(depth - 1, fn)


@pytest.mark.parametrize("dataset, first_zero", [("gov_report", 990), ("vcsum", 989)])
@pytest.mark.parametrize("caller_depth", [0, 150])
def test_rouge_recursion_limit_boundary_is_the_official_one(dataset, first_zero, caller_depth):
    # One sentence of n + 1 words against an 11-word reference: rouge's LCS reconstruction recurses
    # about n deep; the official eval.py scores 0 from n = first_zero on (measured with its code).
    def score(n):
        prediction, answer = _words(n, "a") + " z", _words(10, "b") + " z"
        return _nested(caller_depth, lambda: lb.score_sample(dataset, prediction, [answer]))
    assert score(first_zero - 1) > 0.0
    assert score(first_zero) == 0.0


def test_scorer_rounds_like_python_and_scorer_e_like_numpy():
    # 16 samples, one scoring 1/250: 100 * mean = 0.025 in floats; Python's round gives 0.03,
    # numpy's (used by the official scorer_e) 0.02.
    preds, answers = ["5" + " 1" * 249] + [""] * 15, [["5"]] * 16
    assert lb.scorer("passage_count", preds, answers) == 0.03
    buckets = lb.scorer_e("passage_count", preds, answers, [100] * 16)
    assert buckets["0-4k"] == 0.02 and math.isnan(buckets["4-8k"]) and math.isnan(buckets["8k+"])
    # 100 * (1/8) / 4 = 3.125 exactly: half to even
    assert lb.scorer("passage_count", ["5 1 1 1 1 1 1 1"] + [""] * 3, [["5"]] * 4) == 3.12
    assert lb.scorer("trec", ["AB", "C", "A"], [["AB"], ["AB"], ["A"]], A_B_AB) == 50.0


def test_scorer_e_buckets_and_empty_bucket_without_warning():
    preds, answers = ["5", "5 1", "5 1 1", "x"], [["5"]] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = lb.scorer_e("passage_count", preds, answers, [3999, 4000, 7999, 8000])
        assert got == {"0-4k": 100.0, "4-8k": 41.67, "8k+": 0.0}
        assert all(type(v) is float for v in got.values())
        empty = lb.scorer_e("passage_count_e", preds[:2], answers[:2], [10, 3999.5])
    assert list(empty) == ["0-4k", "4-8k", "8k+"] and empty["0-4k"] == 75.0
    assert math.isnan(empty["4-8k"]) and math.isnan(empty["8k+"])


def test_dataset_names():
    assert len(lb.LONGBENCH_DATASETS) == 21 and len(set(lb.LONGBENCH_DATASETS)) == 21
    assert len(lb.LONGBENCH_E_DATASETS) == 13 and set(lb.LONGBENCH_E_DATASETS) < set(lb.LONGBENCH_DATASETS)
    assert lb.base_dataset("qasper_e") == "qasper" and lb.base_dataset("repobench-p_e") == "repobench-p"
    assert lb.base_dataset("lcc") == "lcc"
    for bad in ("narrativeqa_e", "qasper_E", "squad", "qasper_e_e"):
        with pytest.raises(ValueError, match="unknown LongBench dataset") as info:
            lb.base_dataset(bad)
        assert "narrativeqa" in str(info.value) and "repobench-p_e" in str(info.value)
    with pytest.raises(ValueError, match="'squad'"):
        lb.score_sample("squad", "x", ["x"])
    # an _e name is scored as its base, first-line rule included
    assert lb.score_sample("triviaqa_e", "Paris\nRome", ["Rome"]) == 0.0
    assert lb.score_sample("triviaqa_e", "Paris\nRome", ["Paris"]) == 1.0


def test_protocol_constants():
    assert lb.FIRST_LINE_DATASETS == ("trec", "triviaqa", "samsum", "lsht")
    assert lb.CHAT_TEMPLATE_EXCLUDED == ("trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p")
    assert list(lb.DATASET_CATEGORY) == list(lb.LONGBENCH_DATASETS)
    assert set(lb.DATASET_CATEGORY.values()) == set(lb.CATEGORIES)
    assert lb.DATASET_CATEGORY["dureader"] == "Multi-Document QA"
    assert lb.DATASET_CATEGORY["samsum"] == "Few-shot Learning"
    assert lb.DATASET_CATEGORY["passage_retrieval_zh"] == "Synthetic Tasks"


def test_shipped_config_is_the_official_one():
    notice = (CONFIG_DIR / "README.md").read_text(encoding="utf-8")
    for name in ("dataset2prompt.json", "dataset2maxlen.json", "LICENSE"):
        assert hashlib.sha256((CONFIG_DIR / name).read_bytes()).hexdigest() in notice, name
    assert "MIT License" in (CONFIG_DIR / "LICENSE").read_text(encoding="utf-8")
    prompts = json.loads((CONFIG_DIR / "dataset2prompt.json").read_text(encoding="utf-8"))
    lengths = json.loads((CONFIG_DIR / "dataset2maxlen.json").read_text(encoding="utf-8"))
    assert list(prompts) == list(lengths) == list(lb.LONGBENCH_DATASETS)
    assert "asconcisely" in lb.prompt_template("narrativeqa")
    assert lb.prompt_template("qasper_e") == prompts["qasper"]
    assert lb.prompt_template("lcc") == ("Please complete the code given below. \n{context}"
                                          "Next line of code:\n")
    assert lb.max_new_tokens("gov_report") == 512 and lb.max_new_tokens("hotpotqa_e") == 32


def test_mean_and_category_mean():
    scores = {"samsum": 40.0, "triviaqa": 80.0, "trec": 60.0, "gov_report": 30.0, "multi_news": 25.0,
              "niah_single_1": 90.0}
    assert lb.mean_score(scores) == 54.17
    cats = lb.category_mean({"qasper_e": 10.0, "narrativeqa": 20.0, "trec": 70.0, "lcc": 50.003})
    assert cats == {"Single-Document QA": 15.0, "Few-shot Learning": 70.0, "Code Completion": 50.0,
                    "overall": 45.0}
    assert list(cats) == ["Single-Document QA", "Few-shot Learning", "Code Completion", "overall"]
    # every value rounded once: overall = (0.006 + 0) / 2 -> 0.0, not (0.01 + 0) / 2 -> 0.01
    assert lb.category_mean({"qasper": 0.006, "trec": 0.0}) == {
        "Single-Document QA": 0.01, "Few-shot Learning": 0.0, "overall": 0.0}
    for bad in ({}, {"qasper": math.nan}, {"qasper": "12"}, {"qasper": True}):
        with pytest.raises(ValueError, match="scores"):
            lb.mean_score(bad)
    with pytest.raises(ValueError, match="twice"):
        lb.category_mean({"qasper": 1.0, "qasper_e": 2.0})
    with pytest.raises(ValueError, match="unknown LongBench dataset"):
        lb.category_mean({"niah_single_1": 1.0})


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="answers must be a list of str"):
        lb.score_sample("qasper", "x", "x")
    with pytest.raises(TypeError, match="prediction must be a str"):
        lb.score_sample("qasper", None, ["x"])
    with pytest.raises(TypeError, match="each item of answers"):
        lb.score_sample("qasper", "x", [1])
    with pytest.raises(ValueError, match="pass all_classes"):
        lb.score_sample("trec", "Location", ["Location"])
    with pytest.raises(ValueError, match="'Paragraph N'"):
        lb.score_sample("passage_retrieval_en", "7", ["seven"])
    with pytest.raises(ValueError, match="code_backend must be one of"):
        lb.score_sample("qasper", "x", ["x"], code_backend="rapidfuzz")
    with pytest.raises(ValueError, match="non-empty list"):
        lb.scorer("qasper", [], [])
    with pytest.raises(ValueError, match=r"answers must have one item per prediction \(2\), got 1"):
        lb.scorer("qasper", ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="lengths must have one item per prediction"):
        lb.scorer_e("qasper", ["a"], [["a"]], [])
    with pytest.raises(TypeError, match="lengths must hold numbers"):
        lb.scorer_e("qasper", ["a"], [["a"]], ["100"])
    assert lb.score_sample("qasper", "x", []) == 0.0  # no reference: 0, as the official loop


def test_import_is_light_and_scoring_raises_no_warning():
    # Bare package stubs keep the rosa_lightning package's own (transformers) import out of the
    # measurement; what is left is what importing these two modules costs.
    package_dir = Path(lb.__file__).parents[1]
    code = (
        "import sys, types, warnings\n"
        f"for name, path in (('rosa_lightning', {str(package_dir)!r}), "
        f"('rosa_lightning.evaluation', {str(package_dir / 'evaluation')!r})):\n"
        "    sys.modules[name] = types.ModuleType(name); sys.modules[name].__path__ = [path]\n"
        "import rosa_lightning.evaluation.longbench as lb\n"
        "heavy = [m for m in ('jieba', 'rouge', 'fuzzywuzzy', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    lb.score_sample('lcc', 'x = 1', ['x = 2'])\n"
        "    lb.score_sample('gov_report', 'A b.', ['A c.'])\n"
        "assert not caught, [str(w.message) for w in caught]\n"
        "assert 'fuzzywuzzy.fuzz' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
