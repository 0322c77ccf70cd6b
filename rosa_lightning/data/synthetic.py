"""Synthetic long-context tasks: multi-query associative recall (MQAR) and passkey retrieval.

Each task is a frozen dataclass that describes its vocabulary layout and sequence shape and draws one
example from a seeded ``numpy.random.Generator``::

    ex = task.sample(rng)
    ex["input_ids"]    # int64 [T]
    ex["answer_mask"]  # bool  [T], True where input_ids[t] is an answer token whose prediction is scored
    ex["labels"]       # int64 [T], input_ids where answer_mask else -100

Conventions shared with the DataModule and the LightningModule:

- ``labels`` uses the Hugging Face causal-LM convention: ``labels[t]`` is the token at position t, so the
  prediction that is scored for it comes from the logits at position t-1 (the model shifts internally).
  ``answer_accuracy`` (``rosa_lightning.modeling.losses``, re-exported here) applies the same shift.
- Every example of a task has exactly ``task.seq_len`` tokens, so the default collate can stack them. Token 0
  (``PAD``) never occurs; token 1 (``BOS``) opens every sequence. ``task.vocab_size`` is the smallest embedding
  size that covers every id; a model may use a larger one.
- ``SyntheticDataset(task, num_examples, seed)`` is a fixed-size map-style dataset whose example i depends only on
  (seed, i), so it is the same whatever the worker count, shuffling or epoch. Use different seeds for the train and
  validation sets. Length generalisation is ``dataclasses.replace(task, seq_len=4 * task.seq_len)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from rosa_lightning.modeling.losses import IGNORE_INDEX, answer_accuracy  # noqa: F401 (answer_accuracy: re-exported)

PAD = 0
BOS = 1
_FIRST_FREE = 2


def _finish(ids: np.ndarray, answer_mask: np.ndarray) -> Dict[str, np.ndarray]:
    ids = ids.astype(np.int64)
    labels = np.where(answer_mask, ids, IGNORE_INDEX).astype(np.int64)
    return {"input_ids": ids, "answer_mask": answer_mask.astype(bool), "labels": labels}


@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall with the queried keys far from their values.

    Layout of one sequence of ``seq_len`` tokens::

        BOS  k_1 v_1 ... k_N v_N   filler ...   k_a v_a  k_b v_b ...   (num_queries query pairs at the end)

    The N key-value pairs come right after BOS; the queries repeat ``num_queries`` distinct keys of them in a random
    order at the very end, each followed by its value. The scored answers are the query values, so a key queried
    at time t was bound to its value at least ``seq_len - 1 - 2*num_pairs - 2*num_queries`` tokens earlier: choose
    seq_len so that this exceeds the attention window.

    Vocabulary (ids): PAD=0, BOS=1, keys ``[2, 2+num_keys)``, values ``[key_end, key_end+num_values)``, filler
    ``[value_end, value_end+num_filler)``. Keys are distinct within a sequence; values are drawn with replacement.

    Filler kinds:

    - ``"random"``: uniform filler tokens.
    - ``"recurring_keys"``: uniform filler, plus ``key_recurrences`` occurrences of every queried key inside the
      filler, each as ``f k w`` with f a filler token and w a value token different from k's true value. The
      latest earlier occurrence of a queried key is then always in the filler and followed by a wrong value, and
      the query order is chosen so that the token before each query key never precedes that key in the pair
      section; so copying the successor of the longest, latest exact token match (the token channel) is wrong on
      every answer. The model must tell the binding occurrence (after BOS or a value) from the filler ones.

    Worked example (6 keys at ids 2..7, 6 values at 8..13, 4 filler tokens at 14..17)::

        >>> task = MQAR(seq_len=20, num_pairs=2, num_keys=6, num_values=6, num_filler=4)
        >>> ex = task.sample(np.random.default_rng(1))
        >>> ex["input_ids"].tolist()
        [1, 4, 13, 5, 8, 14, 17, 17, 14, 15, 17, 15, 15, 17, 15, 15, 5, 8, 4, 13]
        >>> np.flatnonzero(ex["answer_mask"]).tolist()
        [17, 19]

    Pairs (4→13), (5→8); filler at t=5..15; queries 5 8 4 13 at t=16..19; the answers 8 and 13 are scored.
    The same draw with recurring keys (one recurrence per queried key)::

        >>> task = MQAR(seq_len=24, num_pairs=2, num_keys=6, num_values=6, num_filler=4,
        ...             filler="recurring_keys", key_recurrences=1)
        >>> task.sample(np.random.default_rng(1))["input_ids"].tolist()
        [1, 4, 13, 5, 8, 14, 17, 17, 14, 15, 4, 9, 15, 17, 15, 15, 5, 11, 14, 14, 5, 8, 4, 13]

    Key 4 recurs at t=10 followed by 9 (its value is 13), key 5 at t=16 followed by 11 (its value is 8): the
    successor of the latest occurrence of each query key is wrong.
    """

    seq_len: int = 256
    num_pairs: int = 8
    num_queries: Optional[int] = None
    num_keys: int = 64
    num_values: int = 64
    num_filler: int = 64
    filler: str = "random"
    key_recurrences: int = 2

    def __post_init__(self) -> None:
        if self.filler not in ("random", "recurring_keys"):
            raise ValueError(f"MQAR.filler must be 'random' or 'recurring_keys', got {self.filler!r}")
        if not 1 <= self.num_pairs <= self.num_keys:
            raise ValueError(f"MQAR.num_pairs must be in [1, num_keys={self.num_keys}], got {self.num_pairs}")
        if not 1 <= self.queries <= self.num_pairs:
            raise ValueError(f"MQAR.num_queries must be in [1, num_pairs={self.num_pairs}], got {self.queries}")
        if self.num_values < 1 or self.num_filler < 1:
            raise ValueError("MQAR.num_values and MQAR.num_filler must be >= 1")
        if self.filler == "recurring_keys":
            if self.num_values < 2:
                raise ValueError("MQAR with filler='recurring_keys' needs num_values >= 2 (a wrong value must exist)")
            if self.key_recurrences < 1:
                raise ValueError(f"MQAR.key_recurrences must be >= 1, got {self.key_recurrences}")
        need = self.filler_len_min
        have = self.seq_len - 1 - 2 * self.num_pairs - 2 * self.queries
        if have < need:
            raise ValueError(
                f"MQAR.seq_len={self.seq_len} leaves {have} filler tokens; at least {need} are needed "
                f"(1 BOS, {2 * self.num_pairs} pair tokens, {2 * self.queries} query tokens)"
            )

    @property
    def queries(self) -> int:
        return self.num_pairs if self.num_queries is None else self.num_queries

    @property
    def filler_len_min(self) -> int:
        if self.filler == "random":
            return 0
        # each recurrence "f k w" needs 3 slots; one more filler token keeps the last w off the first query key
        return 3 * self.queries * self.key_recurrences + 1

    @property
    def key_offset(self) -> int:
        return _FIRST_FREE

    @property
    def value_offset(self) -> int:
        return _FIRST_FREE + self.num_keys

    @property
    def filler_offset(self) -> int:
        return self.value_offset + self.num_values

    @property
    def vocab_size(self) -> int:
        return self.filler_offset + self.num_filler

    def sample(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        n, nq, t_len = self.num_pairs, self.queries, self.seq_len
        keys = self.key_offset + rng.choice(self.num_keys, size=n, replace=False)
        values = self.value_offset + rng.integers(0, self.num_values, size=n)
        filler_len = t_len - 1 - 2 * n - 2 * nq
        filler = self.filler_offset + rng.integers(0, self.num_filler, size=filler_len)
        order = rng.permutation(n)[:nq]
        if self.filler == "recurring_keys":
            order = self._order_without_pair_bigrams(rng, keys, values)
            self._insert_recurrences(rng, filler, keys[order], values[order])

        ids = np.empty(t_len, dtype=np.int64)
        ids[0] = BOS
        ids[1 : 1 + 2 * n : 2] = keys
        ids[2 : 2 + 2 * n : 2] = values
        ids[1 + 2 * n : 1 + 2 * n + filler_len] = filler
        q0 = t_len - 2 * nq
        ids[q0::2] = keys[order]
        ids[q0 + 1 :: 2] = values[order]
        answer_mask = np.zeros(t_len, dtype=bool)
        answer_mask[q0 + 1 :: 2] = True
        return _finish(ids, answer_mask)

    def _order_without_pair_bigrams(
        self, rng: np.random.Generator, keys: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        """A query order in which no bigram (previous query value, query key) occurs in the pair section.

        In the pair section key i is preceded by BOS (i = 0) or by value i-1. Rejection sampling; with values
        drawn with replacement a valid order may not exist, and after 200 draws the last one is kept.
        """
        before = np.concatenate([[BOS], values[:-1]])  # token that precedes key i in the pair section
        for _ in range(200):
            order = rng.permutation(self.num_pairs)[: self.queries]
            if not np.any(values[order[:-1]] == before[order[1:]]):
                return order
        return order

    def _insert_recurrences(
        self, rng: np.random.Generator, filler: np.ndarray, q_keys: np.ndarray, q_values: np.ndarray
    ) -> None:
        """Write ``key_recurrences`` copies of each queried key into ``filler`` (in place) as ``f k w``.

        Slots are 3 tokens apart or more, so every inserted key is preceded by a filler token, and the filler's
        last token stays filler. w is a uniformly drawn value id different from the key's true value.
        """
        count = len(q_keys) * self.key_recurrences
        slack = len(filler) - 1 - 3 * count  # free tokens to spread between the 3-token slots
        gaps = np.sort(rng.integers(0, slack + 1, size=count))
        starts = gaps + 3 * np.arange(count)  # slot s occupies starts[s] .. starts[s] + 2
        which = rng.permutation(np.repeat(np.arange(len(q_keys)), self.key_recurrences))
        for s, i in zip(starts, which):
            wrong = self.value_offset + rng.integers(0, self.num_values - 1)
            if wrong >= q_values[i]:
                wrong += 1  # uniform over the values other than the true one
            filler[s + 1] = q_keys[i]
            filler[s + 2] = wrong


@dataclass(frozen=True)
class Passkey:
    """Passkey / needle-in-a-haystack: a short digit string hidden in filler, asked for at the end.

    Layout of one sequence of ``seq_len`` tokens::

        BOS  filler ...  KEY d_1 ... d_P END  filler ...  QUERY KEY d_1 ... d_P

    The needle ``KEY d_1..d_P END`` starts after a fraction ``depth`` of the filler (0 = right after BOS,
    1 = right before the question; ``None`` draws it uniformly per example). The question ``QUERY KEY`` is
    followed by the passkey again; its P digits are the scored answers.

    Vocabulary (ids): PAD=0, BOS=1, KEY=2, END=3, QUERY=4, digits ``[5, 5+num_digits)``, filler
    ``[5+num_digits, 5+num_digits+num_filler)``.

    Filler kinds:

    - ``"random"``: uniform filler tokens.
    - ``"repeat"``: one fixed sentence of ``sentence_len`` filler tokens repeated (the classic "The grass is green.
      The sky is blue." haystack); the sentence is the same for every example of the task.

    Worked example (digits at ids 5..14, filler at 15..18)::

        >>> task = Passkey(seq_len=20, passkey_len=3, depth=0.5, num_filler=4, filler="repeat", sentence_len=3)
        >>> ex = task.sample(np.random.default_rng(0))
        >>> ex["input_ids"].tolist()
        [1, 18, 17, 17, 18, 2, 13, 11, 10, 3, 17, 17, 18, 17, 17, 4, 2, 13, 11, 10]
        >>> np.flatnonzero(ex["answer_mask"]).tolist()
        [17, 18, 19]

    The haystack repeats the sentence 18 17 17; the needle KEY 13 11 10 END is inserted after half of it (depth
    0.5); the question QUERY KEY at t=15..16 is followed by the scored answers 13 11 10 (passkey digits 8 6 5).
    """

    seq_len: int = 256
    passkey_len: int = 5
    depth: Optional[float] = None
    num_digits: int = 10
    num_filler: int = 64
    filler: str = "random"
    sentence_len: int = 12

    KEY: ClassVar[int] = 2
    END: ClassVar[int] = 3
    QUERY: ClassVar[int] = 4

    def __post_init__(self) -> None:
        if self.filler not in ("random", "repeat"):
            raise ValueError(f"Passkey.filler must be 'random' or 'repeat', got {self.filler!r}")
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"Passkey.depth must be None or in [0, 1], got {self.depth}")
        if self.passkey_len < 1 or self.num_digits < 1 or self.num_filler < 1 or self.sentence_len < 1:
            raise ValueError("Passkey.passkey_len, num_digits, num_filler and sentence_len must be >= 1")
        if self.filler_len < 0:
            raise ValueError(
                f"Passkey.seq_len={self.seq_len} is too short for passkey_len={self.passkey_len}: "
                f"it needs at least {self.seq_len - self.filler_len} tokens"
            )

    @property
    def filler_len(self) -> int:
        # BOS, the needle (KEY digits END) and the question (QUERY KEY digits)
        return self.seq_len - 1 - (self.passkey_len + 2) - (self.passkey_len + 2)

    @property
    def digit_offset(self) -> int:
        return 5

    @property
    def filler_offset(self) -> int:
        return self.digit_offset + self.num_digits

    @property
    def vocab_size(self) -> int:
        return self.filler_offset + self.num_filler

    def haystack(self, rng: np.random.Generator) -> np.ndarray:
        """The filler tokens of one example, int64 [filler_len]."""
        if self.filler == "random":
            return self.filler_offset + rng.integers(0, self.num_filler, size=self.filler_len)
        # the sentence is a property of the task, not of the example: a fixed seed
        sentence = self.filler_offset + np.random.default_rng(0).integers(0, self.num_filler, size=self.sentence_len)
        reps = -(-self.filler_len // self.sentence_len)
        return np.tile(sentence, reps)[: self.filler_len]

    def sample(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        p = self.passkey_len
        digits = self.digit_offset + rng.integers(0, self.num_digits, size=p)
        hay = self.haystack(rng)
        depth = rng.random() if self.depth is None else self.depth
        at = int(round(depth * len(hay)))
        needle = np.concatenate([[self.KEY], digits, [self.END]])
        question = np.concatenate([[self.QUERY, self.KEY], digits])
        ids = np.concatenate([[BOS], hay[:at], needle, hay[at:], question])
        answer_mask = np.zeros(self.seq_len, dtype=bool)
        answer_mask[-p:] = True
        return _finish(ids, answer_mask)


class SyntheticDataset(Dataset):
    """Fixed-size map-style dataset over a synthetic task; example i depends only on (seed, i).

    Items are dicts of tensors: ``input_ids`` int64 [T], ``answer_mask`` bool [T], ``labels`` int64 [T].
    """

    def __init__(self, task, num_examples: int, seed: int = 0) -> None:
        if num_examples < 1:
            raise ValueError(f"SyntheticDataset.num_examples must be >= 1, got {num_examples}")
        if not hasattr(task, "sample"):
            raise TypeError(f"SyntheticDataset.task must have a sample(rng) method, got {type(task).__name__}")
        self.task = task
        self.num_examples = int(num_examples)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        ex = self.task.sample(np.random.default_rng([self.seed, index]))
        return {name: torch.from_numpy(arr) for name, arr in ex.items()}

