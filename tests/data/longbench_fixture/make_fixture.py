"""Writes the LongBench-format fixture files beside this script (``python make_fixture.py``).

Three small hand-made records per dataset, in the official record format (input, context, answers, length,
dataset, language, all_classes, _id), for every LongBench v1 dataset and, with ``_e``, every LongBench-E
dataset (lengths 3000, 6000, 9000: one record per length bucket). The texts are invented; they exercise
the prompt templates, truncation, stops and metrics, not a model's ability.
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
EN_DOC = ("The harbour town of Velmora was founded by the navigator Ansel Brook in 1721. Its lighthouse, built "
          "of grey granite, guided fishing boats for two centuries. In 1902 the town council opened a library "
          "that still holds Brook's logbooks. ")
ZH_DOC = "青石镇位于江南水乡，建于明代。镇上的古桥由石匠李明修建，至今已有四百年历史。每年春天，镇上举办茶叶节，吸引许多游客。"
CODE = ("def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n"
        "    return 2 * (width + height)\n\n\nclass Rectangle:\n    def __init__(self, width, height):\n"
        "        self.width = width\n        self.height = height\n\n    def area(self):\n")
TREC_CLASSES = ["Abbreviation", "Entity", "Description and abstract concept", "Human being", "Location",
                "Numeric value"]
LSHT_CLASSES = ["体育", "财经", "科技", "教育"]
E_DATASETS = ["qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
              "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p"]


def qa(lang, question, answer):
    doc = ZH_DOC if lang == "zh" else EN_DOC
    return [dict(input=question, context=doc * (i + 2), answers=[answer], all_classes=None) for i in range(3)]


def records(name):
    if name in ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique"):
        return qa("en", "Who founded Velmora?", "Ansel Brook")
    if name in ("multifieldqa_zh", "dureader"):
        return qa("zh", "古桥是谁修建的？", "石匠李明")
    if name in ("gov_report", "multi_news"):
        return qa("en", "", "Velmora was founded in 1721 and has a granite lighthouse and a library.")
    if name == "qmsum":
        return qa("en", "What did the council open?", "A library in 1902.")
    if name == "vcsum":
        return qa("zh", "", "青石镇历史悠久，有古桥和茶叶节。")
    if name == "trec":
        ctx = "Question: Who wrote Hamlet?\nType: Human being\nQuestion: Where is Lima?\nType: Location\n"
        return [dict(input=q, context=ctx, answers=[a], all_classes=TREC_CLASSES)
                for q, a in [("How far is the Moon?", "Numeric value"), ("Who built the bridge?", "Human being"),
                             ("What does NASA stand for?", "Abbreviation")]]
    if name == "lsht":
        ctx = "新闻：球队昨晚赢得比赛。\n类别：体育\n新闻：股市今天上涨。\n类别：财经\n"
        return [dict(input=q, context=ctx, answers=[a], all_classes=LSHT_CLASSES)
                for q, a in [("新闻：新手机发布。", "科技"), ("新闻：学校开学。", "教育"), ("新闻：球员受伤。", "体育")]]
    if name == "triviaqa":
        ctx = "Passage: The capital of France is Paris.\nQuestion: What is the capital of France?\nAnswer: Paris\n"
        return [dict(input=f"Passage: {EN_DOC}\nQuestion: Who founded Velmora?", context=ctx * (i + 1),
                     answers=["Ansel Brook", "Brook"], all_classes=None) for i in range(3)]
    if name == "samsum":
        ctx = "Dialogue: Ann: Lunch? Bob: Sure, at noon.\nSummary: Ann and Bob will have lunch at noon.\n"
        return [dict(input="Dialogue: Kim: I lost my keys. Lee: Check the car.", context=ctx * (i + 1),
                     answers=["Kim lost her keys and Lee suggests checking the car."], all_classes=None)
                for i in range(3)]
    if name == "passage_count":
        paras = [EN_DOC, ZH_DOC, EN_DOC, CODE]
        ctx = "".join(f"Paragraph {i + 1}: {p}\n" for i, p in enumerate(paras))
        return [dict(input="", context=ctx, answers=["3"], all_classes=None) for _ in range(3)]
    if name in ("passage_retrieval_en", "passage_retrieval_zh"):
        zh = name.endswith("zh")
        paras = [ZH_DOC if zh else EN_DOC, "Another town.", "A third story."]
        ctx = "".join((f"段落{i + 1}：{p}\n" if zh else f"Paragraph {i + 1}: {p}\n") for i, p in enumerate(paras))
        ans = "段落1" if zh else "Paragraph 1"
        return [dict(input=paras[0][:40], context=ctx, answers=[ans], all_classes=None) for _ in range(3)]
    if name == "lcc":
        return [dict(input="", context=CODE * (i + 1), answers=["        return self.width * self.height"],
                     all_classes=None) for i in range(3)]
    if name == "repobench-p":
        return [dict(input=CODE, context=f"# path: geometry/shapes.py\n{CODE * (i + 1)}",
                     answers=["        return self.width * self.height"], all_classes=None) for i in range(3)]
    raise ValueError(name)


def write(name, e):
    lang = "zh" if name in ("multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh") else "en"
    lang = "code" if name in ("lcc", "repobench-p") else lang
    lengths = [3000, 6000, 9000] if e else [1200, 2400, 3600]
    path = HERE / (f"{name}_e.jsonl" if e else f"{name}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(records(name)):
            r.update(length=lengths[i], dataset=name, language=lang, _id=f"fixture-{name}{'-e' if e else ''}-{i}")
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    V1 = ["narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh", "hotpotqa", "2wikimqa", "musique",
          "dureader", "gov_report", "qmsum", "multi_news", "vcsum", "trec", "triviaqa", "samsum", "lsht",
          "passage_count", "passage_retrieval_en", "passage_retrieval_zh", "lcc", "repobench-p"]
    for n in V1:
        write(n, False)
    for n in E_DATASETS:
        write(n, True)
