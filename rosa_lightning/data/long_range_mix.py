"""Pretraining rows on code with a minority of long-range tasks in natural text formats.

Most rows are the packed token stream of the corpus's files (documents joined by EOT, cut every ``seq_len``
tokens). A fraction ``mix_fraction`` of the rows instead ends with one task whose answer is only in context far
back, written as plain text a user would recognise:

- ``niah``: a needle in a noise haystack, in RULER's ``niah_single_1`` wording (noise sentence per line, one
  "special magic number" under a two-word key, the question and the answer prefix), the answer and EOT;
- ``kv``: a Python dict literal of random string keys and values, then ``assert table["k"] == "v"`` lines
  that look some of them up;
- ``repeat``: a block of code, other code, and the same block again;
- ``digest``: a block of random hex digests or numbers in a code format (a pinned requirements file with sha256
  hashes, a dict of checksums, a list of seeds), other code, and the same block again. Its content cannot be
  predicted from local context, only copied from the first block (the copy distance is about a third of the
  task's budget to nearly all of it);
- ``lcc``: LongBench's lcc prompt around a file prefix, then the file's next non-blank line and EOT;
- ``repobench``: LongBench's repobench-p prompt: other files under ``# path:`` headers, the file's prefix, then
  the next line, chosen to mention a name that only the other files define, and EOT;
- ``copy_ids``: not text but token ids: a block of 8 to ``max(8, budget // 4)`` ids drawn uniformly from the whole
  vocabulary (special tokens excluded), repeated to fill the task's budget. The cleanest copying data there is (no
  local context predicts any copied id, and the block length varies, so no fixed look-back offset does): a
  warm-up rung on it lets a small model form content copying (induction) that the text tasks then reuse.

A task row is ``[tail of a code row] + [EOT] + task``, exactly ``seq_len`` tokens, with the task's length drawn
uniformly from a quarter of the row to the whole row, so the distance from a needle to its question ranges up
to the row length. Every position is scored (``labels = input_ids``). Row i of a dataset depends only on
(seed, i), so the rows are the same whatever the worker count or the shuffling.
"""
from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rosa_lightning.data.stdlib_corpus import EOT

KINDS = ("niah", "kv", "repeat", "digest", "lcc", "repobench", "copy_ids")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NIAH_HEAD = ("A special magic number is hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the number afterwards.\n")
CODE_PROMPT = "Please complete the code given below. \n"  # LongBench's lcc / repobench-p prompt, as shipped
NEXT_LINE = "Next line of code:\n"


def niah_question(key: str) -> str:
    """RULER's niah_single_1 question and answer prefix for one key (base-model template)."""
    return (f"\nWhat is the special magic number for {key} mentioned in the provided text? "
            f"The special magic number for {key} mentioned in the provided text is")


def word_pool(texts: Sequence[str], size: int = 2000) -> List[str]:
    """The ``size`` most frequent lowercase words of 4-9 letters in ``texts`` (keys of the tasks)."""
    counts: Counter = Counter()
    for text in texts[:2000]:
        counts.update(re.findall(r"\b[a-z]{4,9}\b", text[:20000]))
    words = [w for w, _ in counts.most_common(size)]
    if len(words) < 20:
        raise ValueError("word_pool: the texts hold fewer than 20 distinct lowercase words")
    return words


def worth_predicting(line: str) -> bool:
    """A line a completion task asks for: not blank, not only a comment, not a string or docstring line."""
    text = line.strip()
    return bool(text) and not text.startswith(("#", '"', "'"))


def next_line_split(lines: List[str], rng: np.random.Generator, lo: int, hi: int) -> Optional[int]:
    """A random index j in [lo, hi] of a line worth predicting, else the first one after hi; None if none."""
    hi = min(hi, len(lines) - 1)
    choices = [j for j in range(max(0, lo), hi + 1) if worth_predicting(lines[j])]
    if choices:
        return int(rng.choice(choices))
    return next((j for j in range(hi + 1, len(lines)) if worth_predicting(lines[j])), None)


class TaskWriter:
    """Writes the text of one long-range task of a kind within a token budget.

    ``texts``: the code files tasks take their code from; ``count``: tokens of a string.
    """

    def __init__(self, texts: Sequence[str], count: Callable[[str], int], words: Sequence[str]) -> None:
        self.texts = [t for t in texts if t.count("\n") >= 20]
        if not self.texts:
            raise ValueError("TaskWriter: no text has 20 lines or more")
        self.count = count
        self.words = list(words)
        self.noise_tokens = max(1, count(NOISE + "\n"))
        sample = "".join(self.texts[:20])[:50_000]
        self.chars_per_token = len(sample) / max(1, count(sample))

    def write(self, kind: str, budget: int, rng: np.random.Generator) -> str:
        return getattr(self, f"_{kind}")(budget, rng)

    def _lines_within(self, text: str, budget: int, rng: np.random.Generator, start: Optional[int] = None) -> List[str]:
        """Consecutive lines of ``text`` (each with its newline) of about ``budget`` tokens at most."""
        lines = text.splitlines(keepends=True)
        i = int(rng.integers(0, max(1, len(lines) - 10))) if start is None else start
        out, used = [], 0
        for line in lines[i:]:
            n = max(1.0, len(line) / self.chars_per_token)  # an estimate; the row builder checks the real count
            if used + n > budget:
                break
            out.append(line)
            used += n
        return out

    def _key(self, rng: np.random.Generator) -> str:
        a, b = rng.choice(len(self.words), 2, replace=False)
        return f"{self.words[a]}-{self.words[b]}"

    def _niah(self, budget: int, rng: np.random.Generator) -> str:
        key, value = self._key(rng), str(int(rng.integers(1_000_000, 10_000_000)))
        fixed = self.count(NIAH_HEAD + niah_question(key)) + 24
        lines = [NOISE + "\n"] * max(2, (budget - fixed) // self.noise_tokens)
        lines.insert(int(rng.integers(0, len(lines))), f"One of the special magic numbers for {key} is: {value}.\n")
        return NIAH_HEAD + "".join(lines).rstrip("\n") + niah_question(key) + f" {value}."

    def _kv(self, budget: int, rng: np.random.Generator) -> str:
        pairs, used = [], 8
        while used < budget * 0.8:
            k = f"{self._key(rng).replace('-', '_')}_{int(rng.integers(0, 100))}"
            v = f"{int(rng.integers(0, 16 ** 6)):06x}"
            pairs.append((k, v))
            used += 10
        queries = [pairs[j] for j in rng.choice(len(pairs), min(len(pairs), 4), replace=False)]
        body = "".join(f'    "{k}": "{v}",\n' for k, v in pairs)
        asks = "".join(f'assert table["{k}"] == "{v}"\n' for k, v in queries)
        return f"table = {{\n{body}}}\n\n{asks}"

    def _repeat(self, budget: int, rng: np.random.Generator) -> str:
        block = "".join(self._lines_within(self.texts[int(rng.integers(len(self.texts)))], budget // 4, rng))
        other = "".join(self._lines_within(self.texts[int(rng.integers(len(self.texts)))], budget // 2, rng))
        return block + other + block

    def _digest(self, budget: int, rng: np.random.Generator) -> str:
        """``first + other + second``: a block of random digests of ``b`` tokens (24 to a third of the budget),
        about ``budget - 2 b`` tokens of other code, the same block again, so the copy distance (b plus the other
        code) ranges from about a third of the budget to nearly all of it."""
        b = int(rng.integers(24, max(25, budget // 3 + 1)))
        head, tail, line = DIGEST_FORMATS[int(rng.integers(len(DIGEST_FORMATS)))]
        lines, used = [], 0
        while used < b:
            lines.append(line(self, rng))
            used += self.count(lines[-1])
        body = "".join(lines)
        other = "".join(self._lines_within(self.texts[int(rng.integers(len(self.texts)))], budget - 2 * used - 16, rng))
        return f"{head[0]}{body}{tail[0]}{other}{head[1]}{body}{tail[1]}"

    def _package(self, rng: np.random.Generator) -> str:
        version = ".".join(str(int(v)) for v in rng.integers(0, 30, 3))
        return f"{self.words[int(rng.integers(len(self.words)))]}=={version} \\\n    --hash=sha256:{_hex(rng, 64)}\n"

    def _checksum(self, rng: np.random.Generator) -> str:
        return f'    "{self._key(rng).replace("-", "_")}": "{_hex(rng, 16)}",\n'

    def _seeds(self, rng: np.random.Generator) -> str:
        return "    " + " ".join(f"{int(v)}," for v in rng.integers(10_000, 10_000_000, 4)) + "\n"

    def _lcc(self, budget: int, rng: np.random.Generator) -> str:
        text = self.texts[int(rng.integers(len(self.texts)))]
        lines = text.splitlines(keepends=True)
        prefix = self._lines_within(text, budget - 40, rng, start=0)
        j = next_line_split(lines, rng, len(prefix) // 2, len(prefix))
        if j is None:
            return self._repeat(budget, rng)
        return CODE_PROMPT + "".join(lines[:j]) + NEXT_LINE + lines[j].rstrip("\n")

    def _repobench(self, budget: int, rng: np.random.Generator) -> str:
        target = self.texts[int(rng.integers(len(self.texts)))]
        lines = target.splitlines(keepends=True)
        prefix = self._lines_within(target, budget // 2, rng, start=0)
        j = next_line_split(lines, rng, len(prefix) // 2, len(prefix))
        if j is None:
            return self._repeat(budget, rng)
        pool = [self.texts[int(i)] for i in rng.choice(len(self.texts), min(len(self.texts), 300), replace=False)]
        context, _ = cross_file_context(lines[j], pool, target, int(budget // 2 * self.chars_per_token), rng)
        return CODE_PROMPT + context + "".join(lines[:j]) + NEXT_LINE + lines[j].rstrip("\n")


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join("0123456789abcdef"[int(v)] for v in rng.integers(0, 16, n))


# (head of the first and of the second block, their tails, a line maker)
DIGEST_FORMATS = (
    (("# requirements.txt (pinned, with hashes)\n", "\n# requirements.txt, as installed:\n"), ("\n", "\n"),
     TaskWriter._package),
    (("CHECKSUMS = {\n", "\nEXPECTED = {\n"), ("}\n\n", "}\n"), TaskWriter._checksum),
    (("SEEDS = [\n", "\nassert load_seeds() == [\n"), ("]\n\n", "]\n"), TaskWriter._seeds),
)


def cross_file_context(line: str, pool: Sequence[str], exclude: str, budget_chars: int,
                       rng: np.random.Generator, files: int = 3) -> tuple[str, int]:
    """repobench-p's cross-file context for a target ``line``: up to ``files`` snippets under ``# path:`` headers,
    taken around where the other texts of ``pool`` define (or else mention) a name of that line, padded with
    snippets of random texts. About ``budget_chars`` characters in all.
    Returns (context, number of snippets that hold a definition of a name of the line)."""
    names = [n for n in dict.fromkeys(re.findall(r"[A-Za-z_]\w{4,}", line))
             if n not in _KEYWORDS and not n.startswith("__")]
    chosen: List[tuple[str, int]] = []
    for name in names:
        pattern = re.compile(rf"^\s*(?:def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*=", re.M)
        for text in pool:
            if text is exclude or any(text is t for t, _ in chosen):
                continue
            m = pattern.search(text) if name in text else None
            if m:
                chosen.append((text, m.start()))
                break
        if len(chosen) >= files:
            break
    found = len(chosen)
    others = [t for t in pool if t is not exclude and not any(t is c for c, _ in chosen)]
    while len(chosen) < files and others:
        chosen.append((others.pop(int(rng.integers(len(others)))), 0))
    order = rng.permutation(len(chosen))
    per = max(40, budget_chars // max(1, len(chosen)))
    parts = []
    for k in order:
        text, at = chosen[int(k)]
        start = text.rfind("\n", 0, max(0, at - per // 4)) + 1
        end = text.rfind("\n", start, start + per) + 1 or min(len(text), start + per)
        parts.append(f"# path: {_path_name(text)}\n{text[start:end]}")
    return "".join(parts), found


def _path_name(text: str) -> str:
    """A stable module-like path for a snippet's header (the file's first defined name, else a hash)."""
    m = re.search(r"^(?:def|class)\s+(\w+)", text, re.M)
    stem = m.group(1).lower() if m else f"module_{zlib.crc32(text[:200].encode()) % 10_000}"
    return f"src/{stem}.py"


_KEYWORDS = {"False", "None", "True", "class", "return", "while", "yield", "import", "raise", "async", "await",
             "assert", "break", "continue", "except", "finally", "global", "lambda", "nonlocal", "print", "isinstance",
             "self", "super", "range", "len", "dict", "list", "tuple", "object", "Exception", "ValueError", "TypeError"}


def pack_rows(documents: Sequence[np.ndarray], seq_len: int) -> np.ndarray:
    """int32 [N, seq_len]: the documents (each opened by EOT) concatenated and cut every ``seq_len`` tokens."""
    flat = np.concatenate(list(documents)) if len(documents) else np.zeros(0, np.int32)
    n = len(flat) // seq_len
    if n == 0:
        raise ValueError(f"pack_rows: {len(flat)} tokens do not fill one row of {seq_len}")
    return flat[: n * seq_len].reshape(n, seq_len).astype(np.int32)


class LongRangeMixDataset(Dataset):
    """Packed code rows, followed by ``num_tasks`` task rows (see the module docstring).

    Items: ``input_ids`` int64 [seq_len], ``labels`` int64 [seq_len] (= input_ids), ``answer_mask`` bool [seq_len].
    """

    def __init__(self, code_rows: np.ndarray, writer: TaskWriter, encode: Callable[[str], List[int]], eot_id: int,
                 num_tasks: int, kinds: Dict[str, float], seed: int, copy_ids: Optional[np.ndarray] = None) -> None:
        self.code_rows = code_rows
        self.seq_len = int(code_rows.shape[1])
        self.writer, self.encode, self.eot_id = writer, encode, int(eot_id)
        self.num_tasks = int(num_tasks)
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown task kinds {sorted(unknown)}; choose from {KINDS}")
        self.kinds = [k for k in KINDS if kinds.get(k, 0) > 0]
        weights = np.asarray([float(kinds[k]) for k in self.kinds])
        self.weights = weights / weights.sum() if self.kinds else weights
        if self.num_tasks and not self.kinds:
            raise ValueError("LongRangeMixDataset: num_tasks > 0 needs at least one kind with a positive weight")
        self.seed = int(seed)
        self.copy_ids = None if copy_ids is None else np.asarray(copy_ids, dtype=np.int64)
        if "copy_ids" in self.kinds and (self.copy_ids is None or len(self.copy_ids) < 2):
            raise ValueError("LongRangeMixDataset: the copy_ids kind needs copy_ids, the token ids to draw "
                             "blocks from (at least 2)")

    def _copy_ids(self, budget: int, rng: np.random.Generator) -> List[int]:
        """The ``copy_ids`` task (module doc): a random block of ids repeated to ``budget`` tokens."""
        block = self.copy_ids[rng.integers(0, len(self.copy_ids), int(rng.integers(8, max(9, budget // 4 + 1))))]
        return np.resize(block, max(budget, 2 * len(block))).tolist()

    def __len__(self) -> int:
        return len(self.code_rows) + self.num_tasks

    def task_row(self, index: int) -> tuple[np.ndarray, str]:
        """(int64 [seq_len] row, kind) of task row ``index`` (0-based among the task rows)."""
        rng = np.random.default_rng([self.seed, index])
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.weights))]
        budget = int(rng.integers(self.seq_len // 4, self.seq_len))
        for attempt in range(8):
            if attempt == 6:  # the kind does not fit this row length (a needle's template is long): repeat instead
                kind, budget = "repeat", self.seq_len // 2
            body = self._copy_ids(budget, rng) if kind == "copy_ids" else self.encode(self.writer.write(kind, budget, rng))
            ids = [self.eot_id, *body, self.eot_id]
            if len(ids) <= self.seq_len:
                break
            budget = int(budget * 0.8)
        ids = ids[-self.seq_len:]  # only when even the shortest repeat was too long
        filler = self.code_rows[int(rng.integers(len(self.code_rows)))]
        row = np.concatenate([filler[: self.seq_len - len(ids)], np.asarray(ids, dtype=np.int32)])
        return row.astype(np.int64), kind

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        n = len(self.code_rows)
        row = self.code_rows[index].astype(np.int64) if index < n else self.task_row(index - n)[0]
        ids = torch.from_numpy(row)
        return {"input_ids": ids, "labels": ids.clone(), "answer_mask": torch.ones(self.seq_len, dtype=torch.bool)}


class LongRangeMixSource:
    """A ``CodeCorpus`` as a DataModule source: ``build(seed) -> (train, val)`` mixed datasets.

    ``corpus``: a ``CodeCorpus`` or its keyword arguments. ``mix_fraction``: the share of task rows among all rows
    (0 = code only). ``kinds``: relative weight of each task kind. ``max_val_rows``: rows of the validation set.
    """

    def __init__(self, corpus, seq_len: int = 1024, mix_fraction: float = 0.25,
                 kinds: Optional[Dict[str, float]] = None, max_val_rows: Optional[int] = 256) -> None:
        from rosa_lightning.data.code_corpus import CodeCorpus

        if not 0.0 <= mix_fraction < 1.0:
            raise ValueError(f"mix_fraction must be in [0, 1), got {mix_fraction}")
        self.corpus = corpus if isinstance(corpus, CodeCorpus) else CodeCorpus(**dict(corpus))
        self.seq_len = int(seq_len)
        self.mix_fraction = float(mix_fraction)
        self.kinds = {str(k): float(v) for k, v in dict(kinds).items()} if kinds is not None else {k: 1.0 for k in KINDS}
        self.max_val_rows = max_val_rows

    @property
    def tokenizer(self):
        return self.corpus.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.corpus.vocab_size

    def writer(self, split: str) -> TaskWriter:
        texts = self.corpus.texts(split)
        backend = self.tokenizer.backend_tokenizer
        return TaskWriter(texts, lambda s: len(backend.encode(s, add_special_tokens=False).ids), word_pool(texts))

    def dataset(self, split: str, seed: int, max_rows: Optional[int] = None) -> LongRangeMixDataset:
        rows = pack_rows(self.corpus.documents(split), self.seq_len)
        if max_rows is not None:
            rows = rows[: max(1, int(round(max_rows * (1 - self.mix_fraction))))]
        num_tasks = int(round(len(rows) * self.mix_fraction / (1 - self.mix_fraction)))
        backend = self.tokenizer.backend_tokenizer
        special = set(self.tokenizer.all_special_ids) | {self.corpus.eot_id}
        copy_ids = np.asarray([i for i in range(len(self.tokenizer)) if i not in special], dtype=np.int64)
        return LongRangeMixDataset(rows, self.writer(split), lambda s: backend.encode(s, add_special_tokens=False).ids,
                                   self.corpus.eot_id, num_tasks, self.kinds, seed, copy_ids=copy_ids)

    def build(self, seed: int):
        return self.dataset("train", seed), self.dataset("val", seed + 1, self.max_val_rows)
