# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native token-channel kernel (single-stream ROSA over raw token ids, docs/retrieval.md §9).

One online suffix automaton per row over int64 token ids. Transitions live in an edge array
(per-state linked lists, needed to copy a state's transitions into a clone) indexed by an
open-addressing hash table keyed by (state, token).

Latest end positions. Every state v carries e[v], the largest end index of its strings. The
output at t reads e at the suffix link of the new state, then every state on the suffix-link path
to the root gets e = t. Walking that path is O(depth), i.e. O(T^2) on periodic text. Here the
suffix-link tree is kept in a link-cut tree instead (cython_ext/lct.pxi, the one the retrieval
kernel uses; node x is state x, its value e[x] + 1 in ``val``): "assign t to the root path" is one
access plus a lazy "max with t + 1" tag, so every operation costs O(log n) amortised. The
``plain`` flag keeps the O(depth) walk for testing.

Only ``rosa_lightning.retrieval.tokens`` imports this module.
"""
from libc.stdint cimport int32_t, int64_t, uint16_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset
from cython.parallel cimport prange, threadid

import numpy as np

# The link-cut tree (lct.pxi): int32 node ids (state ids), values in an array of their own.
ctypedef int32_t idx_t
cdef enum:
    LCT_VAL_W = 1
    LCT_VAL = 0

# The undo journal of streaming rollback (journal.pxi; every write of _feed to existing memory goes through jput).
include "journal.pxi"
include "lct.pxi"


ctypedef struct TokRow:
    # States s = 0 .. n_states-1, root = 0; state s is node s of the link-cut tree.
    int32_t n_states
    int32_t cap_states
    int32_t last
    int32_t *slen        # [cap_states] longest string length
    int32_t *slink       # [cap_states] suffix link (-1 at the root)
    int32_t *shead       # [cap_states] first outgoing edge, -1 = none
    int32_t *lct         # [cap_states * LCT_W] link-cut tree node records (lct.pxi)
    int32_t *val         # [cap_states] e + 1, e = latest end position (0 = none): the node values
    # Edges: transition (esrc --esym--> etgt), chained per source state through enext.
    int32_t n_edges
    int32_t cap_edges
    int64_t *esym
    int32_t *esrc
    int32_t *etgt
    int32_t *enext
    # Open-addressing hash (linear probing, load <= 1/2): (state, token) -> edge, -1 = empty.
    int32_t *slot
    int64_t hmask
    # The row's tokens so far: the output is the token after the latest earlier occurrence.
    int64_t n_tok
    int64_t cap_tok
    int64_t *tok
    int plain
    # The match of the last fed token (the drafter reads it): its latest earlier end (-1 = none) and the
    # length of the longest suffix that ended there.
    int64_t m_end
    int32_t m_len


ctypedef struct TokMark:
    # A row's scalar state before one position of a journaled scan, and its journal's entry count there.
    int32_t n_states
    int32_t last
    int32_t n_edges
    int64_t n_tok
    int64_t m_end
    int32_t m_len
    int64_t entries


cdef enum:
    FEED_NOMEM = -2


# ---------------------------------------------------------------------------------------------
# memory


cdef int _grow32(int32_t **p, int64_t n) noexcept nogil:
    cdef int32_t *q = <int32_t *> realloc(p[0], n * sizeof(int32_t))
    if q == NULL:
        return -1
    p[0] = q
    return 0


cdef int _grow64(int64_t **p, int64_t n) noexcept nogil:
    cdef int64_t *q = <int64_t *> realloc(p[0], n * sizeof(int64_t))
    if q == NULL:
        return -1
    p[0] = q
    return 0


cdef int _reserve_states(TokRow *r, int64_t n) noexcept nogil:
    if n <= r.cap_states:
        return 0
    if n < 2 * <int64_t> r.cap_states:
        n = 2 * <int64_t> r.cap_states
    if (_grow32(&r.slen, n) or _grow32(&r.slink, n) or _grow32(&r.shead, n)
            or _grow32(&r.lct, n * LCT_W) or _grow32(&r.val, n)):
        return -1
    r.cap_states = <int32_t> n
    return 0


cdef int _reserve_edges(TokRow *r, int64_t n) noexcept nogil:
    if n <= r.cap_edges:
        return 0
    if n < 2 * <int64_t> r.cap_edges:
        n = 2 * <int64_t> r.cap_edges
    if (_grow64(&r.esym, n) or _grow32(&r.esrc, n) or _grow32(&r.etgt, n)
            or _grow32(&r.enext, n)):
        return -1
    r.cap_edges = <int32_t> n
    return 0


cdef int _reserve_tokens(TokRow *r, int64_t n) noexcept nogil:
    if n <= r.cap_tok:
        return 0
    if n < 2 * r.cap_tok:
        n = 2 * r.cap_tok
    if _grow64(&r.tok, n):
        return -1
    r.cap_tok = n
    return 0


cdef inline uint64_t _hash(int32_t src, int64_t sym) noexcept nogil:
    cdef uint64_t h = (<uint64_t> sym) * 0x9E3779B97F4A7C15ULL + (<uint64_t> src) * 0xC2B2AE3D27D4EB4FULL
    h ^= h >> 31
    h *= 0x94D049BB133111EBULL
    h ^= h >> 29
    return h


cdef inline int64_t _find(TokRow *r, int32_t src, int64_t sym) noexcept nogil:
    """Slot holding edge (src, sym), or the empty slot where it would go."""
    cdef int64_t i = <int64_t> (_hash(src, sym) & <uint64_t> r.hmask)
    cdef int32_t e
    while True:
        e = r.slot[i]
        if e < 0 or (r.esym[e] == sym and r.esrc[e] == src):
            return i
        i = (i + 1) & r.hmask


cdef int _rehash(TokRow *r, int64_t cap) noexcept nogil:
    cdef int32_t *fresh = <int32_t *> malloc(cap * sizeof(int32_t))
    cdef int32_t e
    if fresh == NULL:
        return -1
    memset(fresh, 0xFF, cap * sizeof(int32_t))
    free(r.slot)
    r.slot = fresh
    r.hmask = cap - 1
    for e in range(r.n_edges):
        r.slot[_find(r, r.esrc[e], r.esym[e])] = e
    return 0


cdef int _add_edge(jr_t *jr, TokRow *r, int32_t src, int64_t sym, int32_t tgt, int64_t at) noexcept nogil:
    """Insert edge src --sym--> tgt; ``at`` is its empty slot from _find, or -1 to look it up."""
    cdef int32_t e = r.n_edges
    if jr_t is Journal:
        # A journaled scan reserved room first; growing here would move recorded addresses.
        if <int64_t> e + 1 > r.cap_edges or 2 * (<int64_t> e + 1) > r.hmask + 1:
            jr.oom = 1
    if _reserve_edges(r, <int64_t> e + 1):
        return -1
    if 2 * (<int64_t> e + 1) > r.hmask + 1:
        if _rehash(r, 2 * (r.hmask + 1)):
            return -1
        at = -1
    if at < 0:
        at = _find(r, src, sym)
    r.esym[e] = sym
    r.esrc[e] = src
    r.etgt[e] = tgt
    r.enext[e] = r.shead[src]
    jput(jr, &r.shead[src], e)
    jput(jr, &r.slot[at], e)
    r.n_edges = e + 1
    return 0


cdef void _clear(TokRow *r) noexcept nogil:
    """Forget the stream, keep the buffers: only the root state remains."""
    r.n_states = 1
    r.last = 0
    r.slen[0] = 0
    r.slink[0] = -1
    r.shead[0] = -1
    lct_node_init(<NoJournal *> NULL, r.lct, 0, -1)
    r.val[0] = 0
    r.n_edges = 0
    memset(r.slot, 0xFF, (r.hmask + 1) * sizeof(int32_t))
    r.n_tok = 0
    r.m_end = -1
    r.m_len = 0


cdef int _init(TokRow *r, int64_t n_tok, int plain) noexcept nogil:
    """Allocate buffers for about n_tok tokens (they grow later if needed); 0 on success."""
    cdef int64_t hcap = 16
    memset(r, 0, sizeof(TokRow))
    r.plain = plain
    if n_tok < 8:
        n_tok = 8
    while hcap < 4 * n_tok:
        hcap *= 2
    r.slot = <int32_t *> malloc(hcap * sizeof(int32_t))
    if r.slot == NULL:
        return -1
    r.hmask = hcap - 1
    if (_reserve_states(r, 2 * n_tok + 2) or _reserve_edges(r, 2 * n_tok)
            or _reserve_tokens(r, n_tok)):
        return -1
    _clear(r)
    return 0


cdef void _release(TokRow *r) noexcept nogil:
    free(r.slen); free(r.slink); free(r.shead)
    free(r.lct); free(r.val)
    free(r.esym); free(r.esrc); free(r.etgt); free(r.enext)
    free(r.slot); free(r.tok)
    memset(r, 0, sizeof(TokRow))


cdef int64_t _nbytes(TokRow *r) noexcept nogil:
    return ((4 + LCT_W) * 4 * <int64_t> r.cap_states
            + 20 * <int64_t> r.cap_edges + 4 * (r.hmask + 1) + 8 * r.cap_tok)


# ---------------------------------------------------------------------------------------------
# the automaton


cdef int64_t _feed(jr_t *jr, TokRow *r, int64_t x) noexcept nogil:
    """Append token x to the row; return its output (-1 = none) or FEED_NOMEM. Writes into memory that existed
    before this token go through jput (journaled when jr_t is Journal); a new state's or edge's own fields
    need no entry."""
    cdef int64_t t = r.n_tok
    cdef int32_t cur, p, q, clone, match, f, v
    cdef int32_t e = -1
    cdef int64_t at
    cdef int32_t end1
    if _reserve_states(r, <int64_t> r.n_states + 2) or _reserve_tokens(r, t + 1):
        return FEED_NOMEM
    r.tok[t] = x
    r.n_tok = t + 1

    cur = r.n_states
    r.n_states += 1
    r.slen[cur] = r.slen[r.last] + 1
    r.shead[cur] = -1
    lct_node_init(<NoJournal *> NULL, r.lct, cur, -1)
    r.val[cur] = 0

    p = r.last
    while p != -1:
        at = _find(r, p, x)
        e = r.slot[at]
        if e >= 0:
            break
        if _add_edge(jr, r, p, x, cur, at):
            return FEED_NOMEM
        p = r.slink[p]

    if p == -1:
        match = 0
    else:
        q = r.etgt[e]
        if r.slen[p] + 1 == r.slen[q]:
            match = q
        else:
            clone = r.n_states
            r.n_states += 1
            r.slen[clone] = r.slen[p] + 1
            r.slink[clone] = r.slink[q]
            r.shead[clone] = -1
            f = r.shead[q]
            while f >= 0:
                if _add_edge(jr, r, clone, r.esym[f], r.etgt[f], -1):
                    return FEED_NOMEM
                f = r.enext[f]
            # The clone's end set is q's plus t, so before t is assigned its latest end is q's.
            if r.plain:
                lct_node_init(<NoJournal *> NULL, r.lct, clone, -1)
            else:
                lct_cut(jr, r.lct, r.val, q)  # q's value is exact after it
                lct_node_init(<NoJournal *> NULL, r.lct, clone, r.slink[q])
                jput(jr, &r.lct[q * LCT_W + L_FA], clone)
            r.val[clone] = r.val[q]
            jput(jr, &r.slink[q], clone)
            while p != -1:
                e = r.slot[_find(r, p, x)]
                if e < 0 or r.etgt[e] != q:
                    break
                jput(jr, &r.etgt[e], clone)
                p = r.slink[p]
            match = clone
    r.slink[cur] = match
    r.last = cur

    # Output: the token after the latest earlier end of the longest suffix seen before.
    if r.plain:
        end1 = r.val[match]
        v = cur
        while v != -1:
            jput(jr, &r.val[v], <int32_t> (t + 1))
            v = r.slink[v]
    else:
        r.lct[cur * LCT_W + L_FA] = match
        end1 = lct_value(jr, r.lct, r.val, match) if match != 0 else 0
        lct_access(jr, r.lct, r.val, cur)
        lct_apply(jr, r.lct, r.val, cur, <int32_t> (t + 1))
    if match == 0:
        r.m_end = -1
        r.m_len = 0
        return -1
    r.m_end = end1 - 1
    r.m_len = r.slen[match]
    return r.tok[end1]  # the token after the latest earlier end e = end1 - 1


cdef int _scan_row(jr_t *jr, TokRow *r, const int64_t *ids, int64_t lo, int64_t hi, int64_t n,
                   int64_t *out, TokMark *marks) noexcept nogil:
    """Feed ids[lo:hi] of a length-n row; out[t] = output, -1 outside [lo, hi). 0 on success.
    Journaled (jr_t is Journal): marks[t] gets the row's state before position t."""
    cdef int64_t t, y
    for t in range(n):
        if jr_t is Journal:
            marks[t].n_states = r.n_states
            marks[t].last = r.last
            marks[t].n_edges = r.n_edges
            marks[t].n_tok = r.n_tok
            marks[t].m_end = r.m_end
            marks[t].m_len = r.m_len
            marks[t].entries = jr.n
        if t < lo or t >= hi:
            out[t] = -1
        else:
            y = _feed(jr, r, ids[t])
            if y == FEED_NOMEM:
                return -1
            out[t] = y
    return 0


# ---------------------------------------------------------------------------------------------
# Python entry points (the wrapper validates; these trust their arguments)


def next_token(const int64_t[:, ::1] ids, const int64_t[::1] lo, const int64_t[::1] hi,
               int64_t[:, ::1] out, int num_threads, bint plain):
    """Batch token channel: row b feeds ids[b, lo[b]:hi[b]] into a fresh automaton.

    One reusable automaton arena per thread; rows are independent, so results do not depend
    on num_threads. Raises MemoryError if an arena cannot grow.
    """
    cdef Py_ssize_t n_rows = ids.shape[0]
    cdef int64_t n = ids.shape[1]
    cdef int n_arenas = num_threads if num_threads < n_rows else <int> n_rows
    cdef TokRow *arenas
    cdef int *status
    cdef Py_ssize_t b
    cdef int i, bad = 0
    if n_rows == 0:
        return
    if n_arenas < 1:
        n_arenas = 1
    arenas = <TokRow *> calloc(n_arenas, sizeof(TokRow))
    status = <int *> calloc(n_rows, sizeof(int))
    if arenas == NULL or status == NULL:
        free(arenas)
        free(status)
        raise MemoryError("token channel: cannot allocate automaton arenas")
    try:
        for i in range(n_arenas):
            if _init(&arenas[i], n, plain):
                raise MemoryError("token channel: cannot allocate automaton arenas")
        with nogil:
            for b in prange(n_rows, num_threads=n_arenas, schedule="dynamic"):
                _clear(&arenas[threadid()])
                status[b] = _scan_row(<NoJournal *> NULL, &arenas[threadid()], &ids[b, 0], lo[b], hi[b], n,
                                      &out[b, 0], NULL)
        for b in range(n_rows):
            bad |= status[b]
        if bad:
            raise MemoryError("token channel: cannot grow an automaton arena")
    finally:
        for i in range(n_arenas):
            _release(&arenas[i])
        free(arenas)
        free(status)


cdef int _reserve_journaled(TokRow *r, int64_t n) noexcept nogil:
    """Room for n more tokens without any reallocation or rehash (a suffix automaton over m tokens has at
    most 2m + 1 states and 3m transitions), so that a journaled scan's recorded addresses stay valid."""
    cdef int64_t m = r.n_tok + n
    cdef int64_t edges = 3 * m + 8
    cdef int64_t cap
    if _reserve_states(r, r.n_states + 2 * n + 2) or _reserve_tokens(r, m) or _reserve_edges(r, edges):
        return -1
    if r.hmask + 1 < 2 * edges:
        cap = r.hmask + 1
        while cap < 2 * edges:
            cap *= 2
        if _rehash(r, cap):
            return -1
    return 0


cdef class TokenRows:
    """Persistent per-row automata for streaming; rows grow as tokens arrive.

    Rollback: ``scan(..., journal=True)`` records every write to a row's existing memory and the row's
    scalars before each position; ``rollback(k)`` undoes the last k positions of that scan exactly. The
    next scan discards the journal."""

    cdef TokRow *rows
    cdef Journal *journals
    cdef TokMark *marks          # [n_rows * mark_cap]
    cdef int64_t mark_cap
    cdef readonly int64_t journal_positions
    cdef Py_ssize_t n_rows

    def __cinit__(self, Py_ssize_t n_rows, bint plain=False):
        cdef Py_ssize_t b
        self.n_rows = n_rows
        self.marks = NULL
        self.mark_cap = 0
        self.journal_positions = 0
        self.rows = <TokRow *> calloc(n_rows if n_rows > 0 else 1, sizeof(TokRow))
        self.journals = <Journal *> calloc(n_rows if n_rows > 0 else 1, sizeof(Journal))
        if self.rows == NULL or self.journals == NULL:
            raise MemoryError("token channel: cannot allocate stream state")
        for b in range(n_rows):
            if _init(&self.rows[b], 8, plain):
                raise MemoryError("token channel: cannot allocate stream state")

    def __dealloc__(self):
        cdef Py_ssize_t b
        if self.rows != NULL:
            for b in range(self.n_rows):
                _release(&self.rows[b])
            free(self.rows)
            self.rows = NULL
        if self.journals != NULL:
            for b in range(self.n_rows):
                journal_free(&self.journals[b])
            free(self.journals)
            self.journals = NULL
        free(self.marks)
        self.marks = NULL

    cdef void _commit(self) noexcept:
        cdef Py_ssize_t b
        for b in range(self.n_rows):
            self.journals[b].n = 0
            self.journals[b].oom = 0
        self.journal_positions = 0

    def commit(self):
        """Discard the journal: the tokens fed so far can no longer be rolled back."""
        self._commit()

    def reset(self):
        cdef Py_ssize_t b
        for b in range(self.n_rows):
            _clear(&self.rows[b])
        self._commit()

    def scan(self, const int64_t[:, ::1] ids, const int64_t[::1] lo, const int64_t[::1] hi,
             int64_t[:, ::1] out, int num_threads, bint journal=False):
        """Feed ids[b, lo[b]:hi[b]] to row b's automaton; out as in next_token. ``journal``: the chunk can be
        rolled back afterwards (the wrapper passes lo = 0, hi = Tc then)."""
        cdef int64_t n = ids.shape[1]
        cdef Py_ssize_t b
        cdef int bad = 0
        cdef int n_threads = num_threads if num_threads >= 1 else 1
        cdef int *status
        cdef TokMark *mk
        self._commit()
        if journal:
            if n > self.mark_cap:
                mk = <TokMark *> realloc(self.marks, (self.n_rows if self.n_rows > 0 else 1) * n * sizeof(TokMark))
                if mk == NULL:
                    raise MemoryError("token channel: cannot allocate the rollback marks")
                self.marks = mk
                self.mark_cap = n
            for b in range(self.n_rows):
                if _reserve_journaled(&self.rows[b], n):
                    raise MemoryError("token channel: cannot grow the stream state")
        status = <int *> calloc(self.n_rows if self.n_rows > 0 else 1, sizeof(int))
        if status == NULL:
            raise MemoryError("token channel: cannot allocate status buffer")
        with nogil:
            for b in prange(self.n_rows, num_threads=n_threads, schedule="dynamic"):
                if journal:
                    status[b] = _scan_row(&self.journals[b], &self.rows[b], &ids[b, 0], lo[b], hi[b], n,
                                          &out[b, 0], self.marks + b * self.mark_cap)
                else:
                    status[b] = _scan_row(<NoJournal *> NULL, &self.rows[b], &ids[b, 0], lo[b], hi[b], n,
                                          &out[b, 0], NULL)
        for b in range(self.n_rows):
            bad |= status[b]
        free(status)
        if bad:
            raise MemoryError("token channel: cannot grow the stream state")
        if journal:
            self.journal_positions = n

    def rollback(self, int64_t k):
        """Undo the last ``k`` positions of the last (journaled) scan: every row is left exactly as after the
        first ``Tc - k``. ValueError when they were not journaled; MemoryError when the journal overflowed."""
        cdef Py_ssize_t b
        cdef int64_t keep
        cdef TokMark *m
        cdef TokRow *r
        if not rollback_wanted(self.journals, self.n_rows, k, self.journal_positions, "token channel"):
            return
        keep = self.journal_positions - k
        for b in range(self.n_rows):
            r = &self.rows[b]
            m = &self.marks[b * self.mark_cap + keep]
            journal_undo(&self.journals[b], m.entries)
            r.n_states = m.n_states
            r.last = m.last
            r.n_edges = m.n_edges
            r.n_tok = m.n_tok
            r.m_end = m.m_end
            r.m_len = m.m_len
        self.journal_positions = keep

    def last_match(self):
        """(end int64 [B], length int32 [B]) for each row's last fed token: the latest earlier end of the
        longest suffix that also ended before (-1 = none, then length 0) and that suffix's length."""
        ends = np.empty(self.n_rows, dtype=np.int64)
        lens = np.empty(self.n_rows, dtype=np.int32)
        cdef int64_t[::1] ev = ends
        cdef int32_t[::1] lv = lens
        cdef Py_ssize_t b
        for b in range(self.n_rows):
            ev[b] = self.rows[b].m_end
            lv[b] = self.rows[b].m_len
        return ends, lens

    def row_tokens(self):
        """int64 [B]: tokens fed to each row since the last reset."""
        res = np.empty(self.n_rows, dtype=np.int64)
        cdef int64_t[::1] view = res
        cdef Py_ssize_t b
        for b in range(self.n_rows):
            view[b] = self.rows[b].n_tok
        return res

    def nbytes(self):
        """Bytes currently allocated for all rows' automata (capacities, not just what is used)."""
        cdef int64_t total = 0
        cdef Py_ssize_t b
        for b in range(self.n_rows):
            total += _nbytes(&self.rows[b])
        return int(total)
