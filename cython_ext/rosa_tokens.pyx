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
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memset
from cython.parallel cimport prange, threadid

import numpy as np

# The link-cut tree (lct.pxi): int32 node ids (state ids), values in an array of their own.
ctypedef int32_t idx_t
cdef enum:
    LCT_VAL_W = 1
    LCT_VAL = 0

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


cdef int _add_edge(TokRow *r, int32_t src, int64_t sym, int32_t tgt, int64_t at) noexcept nogil:
    """Insert edge src --sym--> tgt; ``at`` is its empty slot from _find, or -1 to look it up."""
    cdef int32_t e = r.n_edges
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
    r.shead[src] = e
    r.slot[at] = e
    r.n_edges = e + 1
    return 0


cdef void _clear(TokRow *r) noexcept nogil:
    """Forget the stream, keep the buffers: only the root state remains."""
    r.n_states = 1
    r.last = 0
    r.slen[0] = 0
    r.slink[0] = -1
    r.shead[0] = -1
    lct_node_init(r.lct, 0, -1)
    r.val[0] = 0
    r.n_edges = 0
    memset(r.slot, 0xFF, (r.hmask + 1) * sizeof(int32_t))
    r.n_tok = 0


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


cdef int64_t _feed(TokRow *r, int64_t x) noexcept nogil:
    """Append token x to the row; return its output (-1 = none) or FEED_NOMEM."""
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
    lct_node_init(r.lct, cur, -1)
    r.val[cur] = 0

    p = r.last
    while p != -1:
        at = _find(r, p, x)
        e = r.slot[at]
        if e >= 0:
            break
        if _add_edge(r, p, x, cur, at):
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
                if _add_edge(r, clone, r.esym[f], r.etgt[f], -1):
                    return FEED_NOMEM
                f = r.enext[f]
            # The clone's end set is q's plus t, so before t is assigned its latest end is q's.
            if r.plain:
                lct_node_init(r.lct, clone, -1)
            else:
                lct_cut(r.lct, r.val, q)  # q's value is exact after it
                lct_node_init(r.lct, clone, r.slink[q])
                r.lct[q * LCT_W + L_FA] = clone
            r.val[clone] = r.val[q]
            r.slink[q] = clone
            while p != -1:
                e = r.slot[_find(r, p, x)]
                if e < 0 or r.etgt[e] != q:
                    break
                r.etgt[e] = clone
                p = r.slink[p]
            match = clone
    r.slink[cur] = match
    r.last = cur

    # Output: the token after the latest earlier end of the longest suffix seen before.
    if r.plain:
        end1 = r.val[match]
        v = cur
        while v != -1:
            r.val[v] = <int32_t> (t + 1)
            v = r.slink[v]
    else:
        r.lct[cur * LCT_W + L_FA] = match
        end1 = lct_value(r.lct, r.val, match) if match != 0 else 0
        lct_access(r.lct, r.val, cur)
        lct_apply(r.lct, r.val, cur, <int32_t> (t + 1))
    if match == 0:
        return -1
    return r.tok[end1]  # the token after the latest earlier end e = end1 - 1


cdef int _scan_row(TokRow *r, const int64_t *ids, int64_t lo, int64_t hi, int64_t n,
                   int64_t *out) noexcept nogil:
    """Feed ids[lo:hi] of a length-n row; out[t] = output, -1 outside [lo, hi). 0 on success."""
    cdef int64_t t, y
    for t in range(n):
        if t < lo or t >= hi:
            out[t] = -1
        else:
            y = _feed(r, ids[t])
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
                status[b] = _scan_row(&arenas[threadid()], &ids[b, 0], lo[b], hi[b], n, &out[b, 0])
        for b in range(n_rows):
            bad |= status[b]
        if bad:
            raise MemoryError("token channel: cannot grow an automaton arena")
    finally:
        for i in range(n_arenas):
            _release(&arenas[i])
        free(arenas)
        free(status)


cdef class TokenRows:
    """Persistent per-row automata for streaming; rows grow as tokens arrive."""

    cdef TokRow *rows
    cdef Py_ssize_t n_rows

    def __cinit__(self, Py_ssize_t n_rows, bint plain=False):
        cdef Py_ssize_t b
        self.n_rows = n_rows
        self.rows = <TokRow *> calloc(n_rows if n_rows > 0 else 1, sizeof(TokRow))
        if self.rows == NULL:
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

    def reset(self):
        cdef Py_ssize_t b
        for b in range(self.n_rows):
            _clear(&self.rows[b])

    def scan(self, const int64_t[:, ::1] ids, const int64_t[::1] lo, const int64_t[::1] hi,
             int64_t[:, ::1] out, int num_threads):
        """Feed ids[b, lo[b]:hi[b]] to row b's automaton; out as in next_token."""
        cdef int64_t n = ids.shape[1]
        cdef Py_ssize_t b
        cdef int bad = 0
        cdef int n_threads = num_threads if num_threads >= 1 else 1
        cdef int *status = <int *> calloc(self.n_rows if self.n_rows > 0 else 1, sizeof(int))
        if status == NULL:
            raise MemoryError("token channel: cannot allocate status buffer")
        with nogil:
            for b in prange(self.n_rows, num_threads=n_threads, schedule="dynamic"):
                status[b] = _scan_row(&self.rows[b], &ids[b, 0], lo[b], hi[b], n, &out[b, 0])
        for b in range(self.n_rows):
            bad |= status[b]
        free(status)
        if bad:
            raise MemoryError("token channel: cannot grow the stream state")

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
