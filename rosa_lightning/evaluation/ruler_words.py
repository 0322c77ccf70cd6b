"""RULER's needle keys: the sorted set of all "adjective-noun" pairs of the wonderwords word lists.

RULER (``scripts/data/synthetic/niah.py``) builds ``sorted(set(f"{adj}-{noun}" for adj in adjs for noun
in nouns))`` from wonderwords' ``adjectivelist.txt`` and ``nounlist.txt`` (about 6.2 million strings) and
draws a key with ``random.choice``. :class:`AdjectiveNounKeys` is that same sequence without building it:
its ``len`` and ``[i]`` equal the list's, so ``random.choice`` draws the same key from the same random
state. The lists ship in ``data/wonderwords/`` (version 2.2.0, MIT licence, see the NOTICE there).
"""
from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from importlib import resources


class AdjectiveNounKeys(Sequence):
    """``sorted(set(a + "-" + n for a in adjectives for n in nouns))`` as a lazy, indexable sequence.

    All strings sharing a prefix are contiguous in sorted order, so the set splits into blocks, one per
    *root* adjective ``r`` holding every string that starts with ``r + "-"``, ordered like ``r + "-"``.
    A block is the sorted nouns behind ``r + "-"``, unless another adjective starts with ``r + "-"``
    (``high`` and ``high-pitched``): those few blocks are built in full.
    """

    def __init__(self, adjectives: Sequence[str], nouns: Sequence[str]):
        if not adjectives or not nouns:
            raise ValueError(f"need at least one adjective and one noun, got {len(adjectives)} and {len(nouns)}")
        self._nouns = sorted(set(nouns))
        self._blocks: list[tuple[str, list[str] | None]] = []  # (root, None) or (root, built block)
        self._starts: list[int] = []
        total = 0
        for group in _root_groups(adjectives):
            block = None
            if len(group) > 1:
                block = sorted({f"{a}-{n}" for a in group for n in self._nouns})
            self._blocks.append((group[0], block))
            self._starts.append(total)
            total += len(self._nouns) if block is None else len(block)
        self._len = total

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"key index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"key index {index} out of range for {self._len} keys")
        b = bisect.bisect_right(self._starts, index) - 1
        root, block = self._blocks[b]
        offset = index - self._starts[b]
        return f"{root}-{self._nouns[offset]}" if block is None else block[offset]


def _root_groups(adjectives: Sequence[str]) -> list[list[str]]:
    """Unique adjectives grouped by root: sorted by ``a + "-"``, every adjective that starts with the
    current root's ``root + "-"`` joins its group (those follow the root directly in that order)."""
    groups: list[list[str]] = []
    for adj in sorted(set(adjectives), key=lambda a: a + "-"):
        if groups and (adj + "-").startswith(groups[-1][0] + "-"):
            groups[-1].append(adj)
        else:
            groups.append([adj])
    return groups


def read_word_list(name: str) -> list[str]:
    """One shipped wonderwords list (``"adjectivelist.txt"`` or ``"nounlist.txt"``), read the way
    wonderwords reads it: one word a line, trailing whitespace stripped, duplicates kept."""
    path = resources.files("rosa_lightning.evaluation").joinpath("data", "wonderwords", name)
    with path.open("r", encoding="utf-8") as f:
        return [line.rstrip() for line in f.readlines()]


@functools.lru_cache(maxsize=1)
def ruler_keys() -> AdjectiveNounKeys:
    """RULER's key list built from the shipped wonderwords 2.2.0 adjective and noun lists."""
    return AdjectiveNounKeys(read_word_list("adjectivelist.txt"), read_word_list("nounlist.txt"))
