"""Plain-Python ground truth for the retrieval kernel, used only by tests.

* ``scan_pair_reference``: a direct transcription of the normative algorithm of docs/retrieval.md §3 (online
  suffix automaton over the K-run string, bare-state context, latest-end update by a walk to the
  root).
* ``scan_pair_oracle``: the automaton-free definition of docs/retrieval.md §4 (byte-string search with a
  binary search on the suffix length); an independent brute-force check of the automaton.
* ``rosa_match_reference``: the batched interface of ``rosa_match`` built on ``scan_pair_reference``.

Per-pair results are dicts with lists: ``tau``, ``q_run_id``, ``r_cf_run`` ([n_q_runs][M][2] K-run
indices), ``k_run_start``, ``k_run_sym``, ``rcap``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from .result import RosaMatch


def k_runs(k: Sequence[int]):
    """K-run starts s_l, symbols c_l and rcap(t) (docs/retrieval.md §2)."""
    starts: List[int] = []
    syms: List[int] = []
    rcap: List[int] = []
    for t, x in enumerate(k):
        if t == 0 or x != k[t - 1]:
            starts.append(t)
            syms.append(int(x))
        rcap.append(len(starts) - 1)
    return starts, syms, rcap


class _Automaton:
    """Suffix automaton with the latest-end field e of docs/retrieval.md §3.1."""

    def __init__(self) -> None:
        self.next: List[Dict[int, int]] = [{}]
        self.link = [-1]
        self.len = [0]
        self.e = [-1]
        self.last = 0

    def _new_state(self, length: int, link: int, nxt: Dict[int, int], e: int) -> int:
        self.next.append(dict(nxt))
        self.link.append(link)
        self.len.append(length)
        self.e.append(e)
        return len(self.len) - 1

    def extend(self, x: int, pos: int) -> None:
        cur = self._new_state(self.len[self.last] + 1, -1, {}, -1)
        v = self.last
        while v != -1 and x not in self.next[v]:
            self.next[v][x] = cur
            v = self.link[v]
        if v == -1:
            self.link[cur] = 0
        else:
            w = self.next[v][x]
            if self.len[v] + 1 == self.len[w]:
                self.link[cur] = w
            else:
                clone = self._new_state(self.len[v] + 1, self.link[w], self.next[w], self.e[w])
                while v != -1 and self.next[v].get(x) == w:
                    self.next[v][x] = clone
                    v = self.link[v]
                self.link[w] = clone
                self.link[cur] = clone
        self.last = cur
        v = cur
        while v != -1:
            self.e[v] = pos
            v = self.link[v]

    def step(self, v: int, x: int) -> int:
        while v != -1:
            if x in self.next[v]:
                return self.next[v][x]
            v = self.link[v]
        return -1


def scan_pair_reference(q: Sequence[int], k: Sequence[int], bits: int) -> dict:
    """docs/retrieval.md §3.4 for one pair: q, k symbol lists of equal length T >= 1."""
    q = [int(x) for x in q]
    k = [int(x) for x in k]
    s, c, rcap = k_runs(k)
    sam = _Automaton()
    n_ext, st, i, adv = -1, 0, -1, False
    tau: List[int] = []
    q_run_id: List[int] = []
    r_cf: List[List[List[int]]] = []
    for t in range(len(q)):
        while n_ext < rcap[t]:
            n_ext += 1
            sam.extend(c[n_ext], n_ext)
        if t == 0 or q[t] != q[t - 1]:
            i += 1
            adv = False
            table = []
            for j in range(bits):
                row = []
                for beta in (0, 1):
                    a = (q[t] & ~(1 << j)) | (beta << j)
                    ns = sam.step(st, a)
                    ok = ns != -1 and sam.e[ns] + 1 <= n_ext
                    row.append(sam.e[ns] + 1 if ok else -1)
                table.append(row)
            r_cf.append(table)
        q_run_id.append(i)
        ns = sam.step(st, q[t])
        if ns == -1:
            tau.append(-1)
        else:
            n = sam.e[ns] + 1
            tau.append(s[n] if n <= n_ext else -1)
            if not adv:
                st, adv = ns, True
    return dict(tau=tau, q_run_id=q_run_id, r_cf_run=r_cf, k_run_start=s, k_run_sym=c, rcap=rcap)


def _lsl(x: bytes, text: bytes):
    """Longest suffix of x occurring in text, with its largest end index; (None, -1) if none."""
    if not x or text.find(x[-1:]) < 0:
        return None, -1
    lo, hi = 1, len(x)  # the suffix of length lo occurs; find the largest length that does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text.find(x[-mid:]) >= 0:
            lo = mid
        else:
            hi = mid - 1
    suffix = x[-lo:]
    return suffix, text.rfind(suffix) + len(suffix) - 1


def _left_ext(sub: bytes, text: bytes) -> bytes:
    """Longest string of the end-position class of ``sub`` in ``text`` (docs/retrieval.md §4, LeftExt)."""
    while True:
        preceding = set()
        pos = text.find(sub)
        while pos >= 0:
            preceding.add(text[pos - 1] if pos >= 1 else None)
            if len(preceding) > 1 or None in preceding:
                return sub
            pos = text.find(sub, pos + 1)
        sub = bytes([preceding.pop()]) + sub


def scan_pair_oracle(q: Sequence[int], k: Sequence[int], bits: int) -> dict:
    """docs/retrieval.md §4 (automaton-free) for one pair; same outputs as ``scan_pair_reference``."""
    q = [int(x) for x in q]
    s, c, rcap = k_runs([int(x) for x in k])
    runs = bytes(c)
    ctx = b""
    adv = False
    i = -1
    tau: List[int] = []
    q_run_id: List[int] = []
    r_cf: List[List[List[int]]] = []
    for t in range(len(q)):
        text = runs[: rcap[t] + 1]
        if t == 0 or q[t] != q[t - 1]:
            i += 1
            adv = False
            table = []
            for j in range(bits):
                row = []
                for beta in (0, 1):
                    a = (q[t] & ~(1 << j)) | (beta << j)
                    sub, e = _lsl(ctx + bytes([a]), text)
                    row.append(e + 1 if sub is not None and e + 1 <= rcap[t] else -1)
                table.append(row)
            r_cf.append(table)
        q_run_id.append(i)
        sub, e = _lsl(ctx + bytes([q[t]]), text)
        if sub is None:
            tau.append(-1)
        else:
            tau.append(s[e + 1] if e + 1 <= rcap[t] else -1)
            if not adv:
                ctx, adv = _left_ext(sub, text), True
    return dict(tau=tau, q_run_id=q_run_id, r_cf_run=r_cf, k_run_start=s, k_run_sym=c, rcap=rcap)


def flipped_cf_times(result: dict, q: Sequence[int], bits: int) -> List[List[int]]:
    """[n_q_runs][M] flipped-bit counterfactual times from a per-pair result (docs/retrieval.md §6)."""
    s = result["k_run_start"]
    starts = [t for t in range(len(q)) if t == 0 or q[t] != q[t - 1]]
    out = []
    for i, u in enumerate(starts):
        row = []
        for j in range(bits):
            n = result["r_cf_run"][i][j][1 - ((int(q[u]) >> j) & 1)]
            row.append(s[n] if n >= 0 else -1)
        out.append(row)
    return out


def rosa_match_reference(q, k, bits: int, num_threads=None, *, want_cf: bool = True,
                         layout: str = "BTR", out=None) -> RosaMatch:
    """``rosa_match`` computed pair by pair with ``scan_pair_reference`` (no validation)."""
    qa = np.asarray(q.numpy() if isinstance(q, torch.Tensor) else q).astype(np.int64)
    ka = np.asarray(k.numpy() if isinstance(k, torch.Tensor) else k).astype(np.int64)
    if layout == "BTR":
        qa, ka = qa.transpose(0, 2, 1), ka.transpose(0, 2, 1)
    B, R, T = qa.shape
    results = [[scan_pair_reference(qa[b, r], ka[b, r], bits) for r in range(R)] for b in range(B)]
    nqr = np.array([[len(res["r_cf_run"]) for res in row] for row in results], dtype=np.int32)
    tau = np.array([[res["tau"] for res in row] for row in results], dtype=np.int32)
    cf = None
    if want_cf:
        nq = max(1, int(nqr.max()))
        cf = np.full((B, R, nq, bits), -1, dtype=np.int32)
        for b in range(B):
            for r in range(R):
                rows = flipped_cf_times(results[b][r], qa[b, r], bits)
                if rows:
                    cf[b, r, : len(rows)] = rows
        cf = torch.from_numpy(cf)
    return RosaMatch(tau=torch.from_numpy(tau), cf=cf, num_q_runs=torch.from_numpy(nqr),
                     q_sym=torch.from_numpy(qa.astype(np.uint8)), bits=bits)
