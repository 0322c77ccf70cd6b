"""Plain-Python ground truth for the token channel (docs/retrieval.md §9): used only by tests.

Two independent implementations of the same definition:

- :func:`next_token_bruteforce` follows docs/retrieval.md §9.1 word for word (common-suffix lengths, longest, then
  latest), O(T^2) or worse, for short sequences;
- :func:`next_token_reference` is the online suffix automaton of docs/retrieval.md §9.2 with dictionary transitions
  and the plain latest-end walk to the root, written for clarity rather than speed.

Both take one row (a sequence of non-negative ints) and return a list of ints, -1 = none.
"""
from __future__ import annotations

from typing import Sequence


def next_token_bruteforce(x: Sequence[int]) -> list[int]:
    """docs/retrieval.md §9.1 directly: y[t] = x[j* + 1], j* the latest end j < t of the longest common suffix."""
    x = list(x)
    out = []
    for t in range(len(x)):
        best_len, best_end = 0, -1
        for j in range(t):  # ascending j, so ">=" keeps the latest end among equal lengths
            length = 0
            while length <= j and x[t - length] == x[j - length]:
                length += 1
            if length > 0 and length >= best_len:
                best_len, best_end = length, j
        out.append(x[best_end + 1] if best_len > 0 else -1)
    return out


class SuffixAutomatonReference:
    """Online suffix automaton over one token stream with per-state latest end positions.

    ``end[v]`` is the largest end index, in the tokens fed so far, of the strings of state v
    (-1 for the root). Feeding token x at position t extends the automaton; the state of the
    longest suffix that also ends earlier is ``link[cur]``, and its end (read before the update
    to t) is the latest earlier occurrence. Then every state on the suffix-link path from cur to
    the root gets end = t: the O(depth) walk that the native kernel replaces.
    """

    def __init__(self) -> None:
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.len: list[int] = [0]
        self.end: list[int] = [-1]
        self.tokens: list[int] = []
        self.last = 0

    def _new_state(self, length: int, link: int, trans: dict[int, int], end: int) -> int:
        self.next.append(trans)
        self.link.append(link)
        self.len.append(length)
        self.end.append(end)
        return len(self.len) - 1

    def feed(self, x: int) -> int:
        """Append token x and return its token-channel output (-1 = x never seen before)."""
        t = len(self.tokens)
        self.tokens.append(x)
        cur = self._new_state(self.len[self.last] + 1, 0, {}, -1)
        p = self.last
        while p != -1 and x not in self.next[p]:
            self.next[p][x] = cur
            p = self.link[p]
        if p != -1:
            q = self.next[p][x]
            if self.len[p] + 1 == self.len[q]:
                self.link[cur] = q
            else:
                clone = self._new_state(self.len[p] + 1, self.link[q], dict(self.next[q]), self.end[q])
                while p != -1 and self.next[p].get(x) == q:
                    self.next[p][x] = clone
                    p = self.link[p]
                self.link[q] = clone
                self.link[cur] = clone
        self.last = cur
        match = self.link[cur]
        y = self.tokens[self.end[match] + 1] if match != 0 else -1
        v = cur
        while v != -1:
            self.end[v] = t
            v = self.link[v]
        return y


def next_token_reference(x: Sequence[int]) -> list[int]:
    """The online automaton of docs/retrieval.md §9.2 over one row."""
    sam = SuffixAutomatonReference()
    return [sam.feed(int(v)) for v in x]
