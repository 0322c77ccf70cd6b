"""RULER niah_single_1: generator (budget, needle, keys, values, seeds, template) and scorer."""
import random
import re

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rosa_lightning.evaluation import niah
from rosa_lightning.evaluation.niah import generate_niah, score_niah, score_niah_sample
from rosa_lightning.evaluation.ruler_words import AdjectiveNounKeys, read_word_list, ruler_keys

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
HEAD = ("A special magic number is hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the number afterwards.\n")
QUESTION = ("\nWhat is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is")


def train_bpe(pre_tokenize: bool = True, vocab_size: int = 500) -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained on the prompt's own sentences and a slice of the key words.
    Without ``pre_tokenize`` its merges may cross newlines, so a line-by-line count is wrong for it."""
    words = read_word_list("adjectivelist.txt")[::7] + read_word_list("nounlist.txt")[::40]
    corpus = [HEAD + "\n".join([NOISE] * 4) + QUESTION.format(key="wary-refund"),
              "One of the special magic numbers for wary-refund is: 3141592.", " ".join(words), "0123456789 " * 3]
    tok = Tokenizer(models.BPE())
    if pre_tokenize:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="module")
def tok():
    return train_bpe()


@pytest.fixture(scope="module")
def samples(tok):
    return generate_niah(tok, 1000, num_samples=60)


def context_lines(record):
    """The haystack lines of a record's prompt, needle included."""
    head, question = niah.prompt_parts(record["key"])
    assert record["input"].startswith(head) and record["input"].endswith(question)
    return record["input"][len(head):len(record["input"]) - len(question)].split("\n")


def test_every_prompt_plus_generation_fits_and_length_is_exact(tok, samples):
    for r in samples:
        assert r["length"] == len(tok.tokenize(r["input"])) == len(tok(r["input"], add_special_tokens=False)["input_ids"])
        assert r["length"] + r["max_new_tokens"] <= r["max_seq_length"] == 1000
        assert r["max_new_tokens"] == 128 and r["dataset"] == "niah_single_1"


class RecordingCount(niah._WholeCount):
    """RULER's whole-prompt count that remembers every draw it counted, in order."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.seen = []

    def __call__(self, d):
        n = super().__call__(d)
        self.seen.append((d, n))
        return n


@pytest.mark.parametrize("max_seq_length", [700, 4200])
def test_search_size_fits_and_one_more_line_does_not(tok, max_seq_length):
    count = RecordingCount(tok)
    size = niah._haystack_size(random.Random(42), count, max_seq_length, 128)
    fits = {d.lines: n + 128 <= max_seq_length for d, n in count.seen[1:]}  # [0] is RULER's estimate probe
    assert fits[size] and fits[size + 1] is False
    assert [d.lines for d, _ in count.seen[:1]] == [5 if max_seq_length < 4096 else 25]


def test_samples_shrink_by_rulers_step_only_after_a_draw_that_did_not_fit(tok):
    search = RecordingCount(tok)
    size = niah._haystack_size(random.Random(42), search, 700, 128)
    count = RecordingCount(tok)
    records = niah._generate(count, 700, 80, 42, 128)
    draws = count.seen[len(search.seen):]  # the same stream: the search's draws come first
    assert [d for d, _ in count.seen[:len(search.seen)]] == [d for d, _ in search.seen]
    lines, i = size, 0
    for r in records:
        while draws[i][1] + 128 > 700:  # RULER draws again, 5 lines smaller
            assert draws[i][0].lines == lines
            lines, i = lines - 5, i + 1
        assert (draws[i][0].lines, draws[i][1], r["num_haystack"]) == (lines, r["length"], lines)
        lines, i = size, i + 1
    assert i == len(draws) and any(r["num_haystack"] < size for r in records)


def test_needle_once_at_stated_line_among_noise(samples):
    for r in samples:
        lines = context_lines(r)
        needle = f"One of the special magic numbers for {r['key']} is: {r['answers'][0]}."
        assert len(lines) == r["num_haystack"] + 1 and r["input"].count("special magic numbers") == 1
        assert lines[r["needle_line"]] == needle
        assert all(line == NOISE for i, line in enumerate(lines) if i != r["needle_line"])
        assert 0 <= r["needle_line"] < r["num_haystack"]


def test_needle_line_is_spread_uniformly(samples):
    depths = [r["needle_line"] / r["num_haystack"] for r in samples]
    assert min(depths) < 0.2 and max(depths) > 0.8 and 0.3 < sum(depths) / len(depths) < 0.7


def test_keys_are_adjective_noun_and_values_seven_digits(samples):
    adjectives, nouns = set(read_word_list("adjectivelist.txt")), set(read_word_list("nounlist.txt"))
    for r in samples:
        key = r["key"]
        splits = [(key[:i], key[i + 1:]) for i, c in enumerate(key) if c == "-"]
        assert any(a in adjectives and n in nouns for a, n in splits), key
        assert len(r["answers"]) == 1 and re.fullmatch(r"[1-9][0-9]{6}", r["answers"][0])


def test_template_around_context_is_rulers(samples):
    for r in samples[:5]:
        assert r["input"].startswith(HEAD + NOISE + "\n" if r["needle_line"] else HEAD + "One of the special")
        assert r["input"].endswith(NOISE + QUESTION.format(key=r["key"]))


def test_same_seed_same_samples_other_seed_other_samples(tok, samples):
    again = generate_niah(tok, 1000, num_samples=60)
    other = generate_niah(tok, 1000, num_samples=60, seed=7)
    assert again == samples
    assert [r["answers"] for r in other] != [r["answers"] for r in samples]
    assert len({r["_id"] for r in samples}) == 60 and samples[3]["_id"] == "niah_single_1-1000-42-3"


def test_line_sum_count_equals_whole_prompt_count(tok):
    fast = niah._generate(niah._LineSumCount(tok), 900, 30, 3, 128)
    slow = niah._generate(niah._WholeCount(tok), 900, 30, 3, 128)
    assert fast == slow


def test_tokenizer_merging_across_newlines_is_counted_whole():
    tok = train_bpe(pre_tokenize=False, vocab_size=700)
    with pytest.warns(UserWarning, match="counting every prompt whole"):
        records = generate_niah(tok, 800, num_samples=10)
    assert all(r["length"] == len(tok.tokenize(r["input"])) and r["length"] + 128 <= 800 for r in records)


def test_too_small_length_names_the_numbers(tok):
    with pytest.raises(ValueError, match=r"max_seq_length=150 is too small .* tokens_to_generate=128"):
        generate_niah(tok, 150)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        generate_niah(tok, 1000, num_samples=0)


def test_score_case_insensitive_substring_share_of_references():
    assert score_niah_sample(" 1234567.", ["1234567"]) == 1.0
    assert score_niah_sample("The number is ABC-12.", ["abc-12"]) == 1.0
    assert score_niah_sample("123456", ["1234567"]) == 0.0
    assert score_niah_sample("1234567 and 7654321", ["1234567", "7654321", "1111111"]) == pytest.approx(2 / 3)
    assert score_niah(["1234567", "no idea", "x 7654321 y"], [["1234567"], ["2222222"], ["7654321"]]) == 66.67


def test_score_postprocesses_like_ruler():
    assert niah.postprocess_prediction("  12\t34\x0056 \n") == "12\n34\n56"
    assert score_niah_sample("12\x0b34567", ["12\n34567"]) == 1.0  # control characters become newlines


def test_score_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        score_niah(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        score_niah_sample("1234567", "1234567")


def test_key_sequence_equals_rulers_sorted_set_on_tricky_lists():
    adjectives = ["high", "high-pitched", "old", "Early", "ad hoc", "old", "a", "a-b", "zz", "x-rated"]
    nouns = ["b-c", "c", "pitched-d", "d", "zebra", "ATM", "a"]
    expected = sorted(set(f"{a}-{n}" for a in adjectives for n in nouns))
    keys = AdjectiveNounKeys(adjectives, nouns)
    assert len(keys) == len(expected) and list(keys) == expected
    assert random.Random(5).choice(keys) == random.Random(5).choice(expected)


def test_shipped_key_sequence_is_strictly_sorted():
    keys = ruler_keys()
    points = sorted(set(keys._starts[1:] + random.Random(0).sample(range(1, len(keys)), 2000)))
    assert all(keys[i - 1] < keys[i] for i in points)
    assert keys[0] < min(keys[i] for i in points) and keys[-1] == keys[len(keys) - 1] > keys[points[-1] - 1]
