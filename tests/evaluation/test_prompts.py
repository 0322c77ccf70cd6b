"""LongBench prompts as the official pred.py builds them: template, strict middle truncation (BOS skipped in
the halves, re-tokenized), chat-template rule, and the max_length check."""
import pytest
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from rosa_lightning.evaluation import longbench
from rosa_lightning.evaluation.prompts import build_prompt, check_max_length, instruction_tokens, tokenize
from rosa_lightning.data.stdlib_corpus import train_tokenizer

from .helpers import fixture_texts, tokenizer

CHAT = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"


def _record(context: str, question: str = "Who founded Velmora?") -> dict:
    return {"context": context, "input": question, "answers": ["x"], "length": 1, "dataset": "qasper",
            "language": "en", "all_classes": None, "_id": "r"}


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def bos_tok():
    """The same BPE with a BOS token added in front of every encoding (like Llama tokenizers)."""
    raw = train_tokenizer(fixture_texts() + ["<s>"], 400)
    raw.add_special_tokens(["<s>"])
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", raw.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def test_template_is_applied_with_format(tok):
    r = _record("Some text.")
    p = build_prompt(tok, "qasper", r, 10_000, chat_template=False)
    assert p.input_ids == tokenize(tok, longbench.prompt_template("qasper").format(**r)) and not p.truncated


def test_truncation_only_when_strictly_longer(tok):
    r = _record("The lighthouse guided boats. " * 40)
    n = len(tokenize(tok, longbench.prompt_template("qasper").format(**r)))
    kept = build_prompt(tok, "qasper", r, n, chat_template=False)
    assert not kept.truncated and len(kept.input_ids) == n == kept.full_tokens
    cut = build_prompt(tok, "qasper", r, n - 1, chat_template=False)
    assert cut.truncated and cut.full_tokens == n


@pytest.mark.parametrize("max_length", [120, 121, 57])
def test_middle_truncation_keeps_first_and_last_halves(tok, max_length):
    r = _record("The harbour town of Velmora was founded in 1721. " * 30)
    prompt = longbench.prompt_template("qasper").format(**r)
    ids = tokenize(tok, prompt)
    half = max_length // 2  # int(max_length / 2): an odd budget keeps one token less
    p = build_prompt(tok, "qasper", r, max_length, chat_template=False)
    head, tail = tok.decode(ids[:half], skip_special_tokens=True), tok.decode(ids[-half:], skip_special_tokens=True)
    assert p.truncated and tok.decode(p.input_ids) == head + tail
    assert prompt.startswith(head) and prompt.endswith(tail)
    assert abs(len(p.input_ids) - 2 * half) <= 2  # re-tokenizing at the seam may merge or split a token


def test_truncation_with_a_bos_tokenizer_keeps_one_bos(bos_tok):
    r = _record("The harbour town of Velmora was founded in 1721. " * 30)
    bos = bos_tok.bos_token_id
    p = build_prompt(bos_tok, "qasper", r, 100, chat_template=False)
    assert p.truncated and p.input_ids[0] == bos and p.input_ids.count(bos) == 1
    # the BOS counts toward the budget, as in the official code: the head half holds it and 49 text tokens
    ids = tokenize(bos_tok, longbench.prompt_template("qasper").format(**r))
    assert bos_tok.decode(p.input_ids, skip_special_tokens=True) == (
        bos_tok.decode(ids[:50], skip_special_tokens=True) + bos_tok.decode(ids[-50:], skip_special_tokens=True))


def test_chat_template_rule(tok):
    chat = tokenizer()
    chat.chat_template = CHAT
    r = _record("Text.")
    for dataset in longbench.LONGBENCH_DATASETS:
        p = build_prompt(chat, dataset, r, 10_000, chat_template=True)
        text = chat.decode(p.input_ids)
        assert text.startswith("<|user|>") == (dataset not in longbench.CHAT_TEMPLATE_EXCLUDED), dataset
        assert not chat.decode(build_prompt(chat, dataset, r, 10_000, chat_template=False).input_ids).startswith("<|user|>")
    with pytest.raises(ValueError, match="no chat template"):
        build_prompt(tok, "qasper", r, 10_000, chat_template=True)


def test_max_length_below_the_instructions_is_refused(tok):
    need = instruction_tokens(tok, "qasper")
    check_max_length(tok, "qasper", need + 1)
    with pytest.raises(ValueError, match=rf"max_length={need}.*{need} tokens of 'qasper'"):
        check_max_length(tok, "qasper", need)
    for bad in (True, 1, "100", 3.0):
        with pytest.raises(ValueError, match="int >= 2"):
            check_max_length(tok, "qasper", bad)
