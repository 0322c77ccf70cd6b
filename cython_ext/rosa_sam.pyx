# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native ROSA retrieval kernel (suffix automaton over run-compressed key symbols).

Implements the reference semantics of spec §3.3 bit-exactly for every (row, route) pair, without
the GIL, over OpenMP threads (static schedule, one automaton per thread arena, results
independent of the thread count).

One per-pair automaton (``Sam``) serves both training (``match``: a fresh state per pair, with
counterfactuals) and inference (``StreamState``: persistent states fed chunk by chunk).

Latest end positions e[v] and context steps have two exact implementations per pair:

* naive: e is updated by a walk from the new state to the root (spec §3.3 step 5) and a step
  walks suffix links. Cheapest while suffix-link chains are short (random input).
* link-cut tree (LCT) over the suffix-link tree: extending is one access of the new state plus a
  lazy "max with pos" tag on the root path (positions only grow, so max equals assignment); a
  clone is an edge subdivision (cut + two links); reading e is a splay. A step from a state walks
  no chain: after accessing the state its root path is one splay tree ordered by depth, and
  "has an x-transition" is monotone along it (an ancestor's end set contains the state's), so
  the deepest ancestor with the transition is found by a descent.

A pair starts naive and converts in place to the LCT (O(states)) once its naive chain work exceeds
a budget linear in the positions consumed, so the worst case stays O(T log T). ``mode`` forces
either path (used by tests).

Only ``rosa_lightning.retrieval._native`` imports this module.
"""
from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    """

cdef enum:
    MODE_HYBRID = 0
    MODE_NAIVE = 1
    MODE_LCT = 2
    # Naive chain work allowed per consumed position (plus a constant) before switching to the LCT.
    WORK_PER_POS = 24
    WORK_SLACK = 4096


cdef struct StateInfo:
    int32_t link
    int32_t slen         # len of the longest string
    int32_t e            # latest end index (a K-run index); the LCT's node value in LCT mode
    int32_t pad


cdef struct Sam:
    int32_t A            # alphabet size 2**bits
    int32_t bits
    int64_t cap          # state capacity
    int64_t run_cap      # K-run capacity
    int32_t n_states
    int32_t last
    int32_t *nxt         # [cap * A] dense transitions, -1 = none
    StateInfo *info      # link, len, latest end of each state, together in one 16-byte record
    int32_t *fa          # LCT: splay parent or path parent, -1 = none
    int32_t *ch          # LCT: [cap * 2] splay children
    int32_t *tag         # LCT: pending "max with" for the splay subtree, -1 = none
    int32_t *run_start   # [run_cap] start time of each K-run
    int32_t n_runs
    int32_t st           # context state
    int32_t adv
    int32_t lastq        # -1 before the first position
    int32_t lastk
    int32_t nq           # Q-runs seen
    int32_t lct          # 1 once in LCT mode
    int32_t mode
    int64_t length       # positions consumed (absolute time of the next position)
    int64_t skip         # positions with time < skip are padding
    int64_t work         # naive chain steps so far


cdef int sam_alloc(Sam *S, int bits, int64_t cap, int64_t run_cap) noexcept nogil:
    """Allocate arrays; returns 0 on success, -1 when out of memory."""
    S.bits = bits
    S.A = 1 << bits
    S.cap = cap
    S.run_cap = run_cap
    S.nxt = <int32_t *> malloc(cap * S.A * sizeof(int32_t))
    S.info = <StateInfo *> malloc(cap * sizeof(StateInfo))
    S.fa = <int32_t *> malloc(cap * sizeof(int32_t))
    S.ch = <int32_t *> malloc(2 * cap * sizeof(int32_t))
    S.tag = <int32_t *> malloc(cap * sizeof(int32_t))
    S.run_start = <int32_t *> malloc(run_cap * sizeof(int32_t))
    if (S.nxt == NULL or S.info == NULL or S.fa == NULL
            or S.ch == NULL or S.tag == NULL or S.run_start == NULL):
        return -1
    return 0


cdef void sam_free(Sam *S) noexcept nogil:
    free(S.nxt); free(S.info)
    free(S.fa); free(S.ch); free(S.tag); free(S.run_start)
    S.nxt = NULL; S.info = NULL
    S.fa = NULL; S.ch = NULL; S.tag = NULL; S.run_start = NULL


cdef int sam_reserve(Sam *S, int64_t more_positions) noexcept nogil:
    """Grow capacity so that ``more_positions`` further positions fit (at most 2 states each)."""
    cdef int64_t need = S.n_states + 2 * more_positions + 2
    cdef int64_t need_runs = S.n_runs + more_positions + 1
    cdef int64_t c
    cdef void *p
    if need > S.cap:
        c = S.cap * 2
        if c < need:
            c = need
        p = realloc(S.nxt, c * S.A * sizeof(int32_t))
        if p == NULL: return -1
        S.nxt = <int32_t *> p
        p = realloc(S.info, c * sizeof(StateInfo))
        if p == NULL: return -1
        S.info = <StateInfo *> p
        p = realloc(S.fa, c * sizeof(int32_t))
        if p == NULL: return -1
        S.fa = <int32_t *> p
        p = realloc(S.ch, 2 * c * sizeof(int32_t))
        if p == NULL: return -1
        S.ch = <int32_t *> p
        p = realloc(S.tag, c * sizeof(int32_t))
        if p == NULL: return -1
        S.tag = <int32_t *> p
        S.cap = c
    if need_runs > S.run_cap:
        c = S.run_cap * 2
        if c < need_runs:
            c = need_runs
        p = realloc(S.run_start, c * sizeof(int32_t))
        if p == NULL: return -1
        S.run_start = <int32_t *> p
        S.run_cap = c
    return 0


cdef inline int32_t new_state(Sam *S, int32_t slen, int32_t link, int32_t e) noexcept nogil:
    cdef int32_t v = S.n_states
    S.n_states += 1
    memset(S.nxt + <int64_t> v * S.A, 0xFF, S.A * sizeof(int32_t))
    S.info[v].link = link
    S.info[v].slen = slen
    S.info[v].e = e
    if S.lct:
        S.fa[v] = -1
        S.ch[2 * v] = -1
        S.ch[2 * v + 1] = -1
        S.tag[v] = -1
    return v


cdef void sam_reset(Sam *S, int mode, int64_t skip) noexcept nogil:
    """Empty automaton (root only) and a fresh scan state."""
    S.n_states = 0
    S.lct = 1 if mode == MODE_LCT else 0
    new_state(S, 0, -1, -1)
    S.last = 0
    S.n_runs = 0
    S.st = 0
    S.adv = 0
    S.lastq = -1
    S.lastk = -1
    S.nq = 0
    S.mode = mode
    S.lct = 1 if mode == MODE_LCT else 0
    S.length = 0
    S.skip = skip
    S.work = 0


# ---------------------------------------------------------------- link-cut tree (rooted, max tags)

cdef inline bint lct_is_root(Sam *S, int32_t x) noexcept nogil:
    cdef int32_t p = S.fa[x]
    return p == -1 or (S.ch[2 * p] != x and S.ch[2 * p + 1] != x)


cdef inline void lct_apply(Sam *S, int32_t x, int32_t val) noexcept nogil:
    if x != -1:
        if S.info[x].e < val:
            S.info[x].e = val
        if S.tag[x] < val:
            S.tag[x] = val


cdef inline void lct_push(Sam *S, int32_t x) noexcept nogil:
    cdef int32_t t = S.tag[x]
    if t != -1:
        lct_apply(S, S.ch[2 * x], t)
        lct_apply(S, S.ch[2 * x + 1], t)
        S.tag[x] = -1


cdef inline void lct_rotate(Sam *S, int32_t x) noexcept nogil:
    cdef int32_t p = S.fa[x]
    cdef int32_t g = S.fa[p]
    cdef int side = 1 if S.ch[2 * p + 1] == x else 0
    cdef int32_t b = S.ch[2 * x + 1 - side]
    if not lct_is_root(S, p):
        if S.ch[2 * g] == p:
            S.ch[2 * g] = x
        else:
            S.ch[2 * g + 1] = x
    S.fa[x] = g
    S.ch[2 * x + 1 - side] = p
    S.fa[p] = x
    S.ch[2 * p + side] = b
    if b != -1:
        S.fa[b] = p


cdef void lct_push_path(Sam *S, int32_t x) noexcept nogil:
    """Push pending tags from x's splay root down to x (recursion depth = splay depth)."""
    if not lct_is_root(S, x):
        lct_push_path(S, S.fa[x])
    lct_push(S, x)


cdef void lct_splay(Sam *S, int32_t x) noexcept nogil:
    cdef int32_t p, g
    lct_push_path(S, x)
    while not lct_is_root(S, x):
        p = S.fa[x]
        if not lct_is_root(S, p):
            g = S.fa[p]
            if (S.ch[2 * g] == p) == (S.ch[2 * p] == x):
                lct_rotate(S, p)
            else:
                lct_rotate(S, x)
        lct_rotate(S, x)


cdef void lct_access(Sam *S, int32_t x) noexcept nogil:
    """Make the root-to-x path one splay tree with x at its root and no deeper part."""
    cdef int32_t below = -1
    cdef int32_t y = x
    while y != -1:
        lct_splay(S, y)
        S.ch[2 * y + 1] = below
        below = y
        y = S.fa[y]
    lct_splay(S, x)


cdef void lct_enable(Sam *S) noexcept nogil:
    """Switch a pair to LCT mode: every suffix link becomes a path-parent pointer."""
    cdef int32_t v
    for v in range(S.n_states):
        S.fa[v] = S.info[v].link
        S.ch[2 * v] = -1
        S.ch[2 * v + 1] = -1
        S.tag[v] = -1
    S.lct = 1


# ---------------------------------------------------------------- automaton

cdef inline int32_t get_e(Sam *S, int32_t v) noexcept nogil:
    if S.lct:
        lct_splay(S, v)
    return S.info[v].e


cdef void extend(Sam *S, int32_t x, int32_t pos) noexcept nogil:
    """Append symbol x at K-run index pos (spec §3.3 extend)."""
    cdef int32_t A = S.A
    cdef int32_t cur = new_state(S, S.info[S.last].slen + 1, -1, -1)
    cdef int32_t v = S.last
    cdef int32_t w, clone, ew, left
    while v != -1 and S.nxt[<int64_t> v * A + x] == -1:
        S.nxt[<int64_t> v * A + x] = cur
        v = S.info[v].link
    if v == -1:
        S.info[cur].link = 0
    else:
        w = S.nxt[<int64_t> v * A + x]
        if S.info[v].slen + 1 == S.info[w].slen:
            S.info[cur].link = w
        else:
            if S.lct:
                # Cut w from its parent; access(w) also makes e[w] exact.
                lct_access(S, w)
                left = S.ch[2 * w]
                S.fa[left] = -1
                S.ch[2 * w] = -1
            ew = S.info[w].e
            clone = new_state(S, S.info[v].slen + 1, S.info[w].link, ew)
            memcpy(S.nxt + <int64_t> clone * A, S.nxt + <int64_t> w * A, A * sizeof(int32_t))
            while v != -1 and S.nxt[<int64_t> v * A + x] == w:
                S.nxt[<int64_t> v * A + x] = clone
                v = S.info[v].link
            S.info[w].link = clone
            S.info[cur].link = clone
            if S.lct:
                S.fa[clone] = S.info[clone].link
                S.fa[w] = clone
    S.last = cur
    if S.lct:
        S.fa[cur] = S.info[cur].link
        lct_access(S, cur)
        lct_apply(S, cur, pos)
    else:
        v = cur
        while v != -1:
            S.info[v].e = pos
            v = S.info[v].link
            S.work += 1


cdef inline int32_t step(Sam *S, int32_t v, int32_t x) noexcept nogil:
    """Spec §3.3 step(v, x): the x-successor of the deepest suffix-link ancestor having one."""
    cdef int32_t A = S.A
    cdef int32_t y, best
    if S.nxt[x] == -1:                      # the root lies on every chain: O(1) failure
        return -1
    if S.nxt[<int64_t> v * A + x] != -1:
        return S.nxt[<int64_t> v * A + x]
    if not S.lct:
        v = S.info[v].link
        while S.nxt[<int64_t> v * A + x] == -1:
            v = S.info[v].link
            S.work += 1
        return S.nxt[<int64_t> v * A + x]
    lct_access(S, v)
    y = v
    best = 0
    while y != -1:
        v = y                             # splaying the deepest visited node pays for the descent
        if S.nxt[<int64_t> y * A + x] != -1:
            best = y
            y = S.ch[2 * y + 1]
        else:
            y = S.ch[2 * y]
    lct_splay(S, v)
    return S.nxt[<int64_t> best * A + x]


cdef inline int32_t dest_time(Sam *S, int32_t ns) noexcept nogil:
    """Start time of the run after the latest end of state ns, or -1 (not visible / no state)."""
    cdef int32_t n
    if ns == -1:
        return -1
    n = get_e(S, ns) + 1
    if n < S.n_runs:
        return S.run_start[n]
    return -1


cdef void probe_flips(Sam *S, int32_t v, int32_t a, int32_t *out) noexcept nogil:
    """out[j] = dest_time(step(v, a ^ (1 << j))) for every bit j: the flipped counterfactuals.

    Naive mode walks v's suffix-link chain once for all bits (one transition row per state)."""
    cdef int32_t A = S.A
    cdef int32_t bits = S.bits
    cdef int32_t ns[8]
    cdef int32_t j, x
    cdef int32_t pending = 0
    cdef const int32_t *row
    cdef int32_t top = -1, y, best
    if S.lct:
        # One access of v serves every probe: splaying within v's root-path tree keeps its nodes.
        for j in range(bits):
            x = a ^ (1 << j)
            ns[j] = S.nxt[<int64_t> v * A + x]
            if ns[j] != -1 or S.nxt[x] == -1:
                continue
            if top == -1:
                lct_access(S, v)
                top = v
            y = top
            best = 0
            while y != -1:
                top = y                   # splaying the deepest visited node pays for the descent
                if S.nxt[<int64_t> y * A + x] != -1:
                    best = y
                    y = S.ch[2 * y + 1]
                else:
                    y = S.ch[2 * y]
            lct_splay(S, top)
            ns[j] = S.nxt[<int64_t> best * A + x]
        for j in range(bits):
            out[j] = dest_time(S, ns[j])
        return
    row = S.nxt + <int64_t> v * A
    for j in range(bits):
        x = a ^ (1 << j)
        ns[j] = row[x]
        if ns[j] == -1 and S.nxt[x] != -1:     # not at v, but the root has it: walk
            pending |= 1 << j
    while pending:
        v = S.info[v].link
        S.work += 1
        row = S.nxt + <int64_t> v * A
        for j in range(bits):
            if (pending >> j) & 1 and row[a ^ (1 << j)] != -1:
                ns[j] = row[a ^ (1 << j)]
                pending &= ~(1 << j)
    for j in range(bits):
        out[j] = dest_time(S, ns[j])


cdef void scan_pair(Sam *S, const uint8_t *q, const uint8_t *k, int64_t n,
               int32_t *tau, int32_t *cf) noexcept nogil:
    """Consume n positions (spec §3.3 scan body); writes tau[0..n) and, if cf != NULL, the
    flipped-bit counterfactual times of every Q-run started here at cf[(Q-run index) * bits + j]."""
    cdef int64_t i
    cdef int32_t a, x, ns, j
    cdef int32_t bits = S.bits
    for i in range(n):
        if S.length < S.skip:
            tau[i] = -1
            S.length += 1
            continue
        x = k[i]
        if x != S.lastk:
            S.lastk = x
            S.run_start[S.n_runs] = <int32_t> S.length
            S.n_runs += 1
            extend(S, x, S.n_runs - 1)
        a = q[i]
        if a != S.lastq:
            S.lastq = a
            S.adv = 0
            if cf != NULL:
                probe_flips(S, S.st, a, cf + <int64_t> S.nq * bits)
            S.nq += 1
        if S.adv:
            # The context ends in a and runs never repeat a symbol: the walk ends at the root.
            tau[i] = dest_time(S, S.nxt[a])
        else:
            ns = step(S, S.st, a)
            tau[i] = dest_time(S, ns)
            if ns != -1:
                S.st = ns
                S.adv = 1
        S.length += 1
        if not S.lct and S.mode == MODE_HYBRID:
            if S.work > WORK_SLACK + WORK_PER_POS * S.length:
                lct_enable(S)


# ---------------------------------------------------------------- batched training entry points

cdef inline void gather(const uint8_t *src, int64_t stride, int64_t n, uint8_t *dst) noexcept nogil:
    cdef int64_t t
    if stride == 1:
        memcpy(dst, src, n)
    else:
        for t in range(n):
            dst[t] = src[t * stride]


def gather_queries(const uint8_t[:, :, ::1] q, bint btr, uint8_t[:, :, ::1] q_sym,
                   int32_t[:, ::1] num_q_runs, int num_threads):
    """Copy q ([B, T, R] if btr else [B, R, T]) into q_sym [B, R, T] and count Q-runs per pair."""
    cdef int64_t B = q_sym.shape[0], R = q_sym.shape[1], T = q_sym.shape[2]
    cdef int64_t pair, b, r, t, stride
    cdef int32_t runs
    cdef const uint8_t *src
    cdef uint8_t *dst
    stride = R if btr else 1
    with nogil:
        for pair in prange(B * R, num_threads=num_threads, schedule="static"):
            b = pair // R
            r = pair % R
            if btr:
                src = &q[b, 0, r]
            else:
                src = &q[b, r, 0]
            dst = &q_sym[b, r, 0]
            gather(src, stride, T, dst)
            runs = 1
            for t in range(1, T):
                if dst[t] != dst[t - 1]:
                    runs = runs + 1
            num_q_runs[b, r] = runs


def match(const uint8_t[:, :, ::1] q_sym, const uint8_t[:, :, ::1] k, bint btr, int bits,
          int32_t[:, :, ::1] tau, int32_t[::1] cf, int64_t nq_max, bint want_cf,
          int num_threads, int mode):
    """Run the scan for every pair. q_sym: [B, R, T]; k: [B, T, R] if btr else [B, R, T].

    Writes tau [B, R, T] and, when want_cf, cf (flat [B, R, nq_max, bits]; every entry is written).
    One arena per thread, allocated once per call.
    """
    cdef int64_t B = tau.shape[0], R = tau.shape[1], T = tau.shape[2]
    cdef int64_t pair, b, r, i, stride = R if btr else 1
    cdef int nthreads = num_threads, tid
    cdef Sam *arenas
    cdef uint8_t *kbufs
    cdef int32_t *cfp
    cdef const uint8_t *ksrc
    cdef int failed = 0
    if nthreads < 1:
        nthreads = 1
    arenas = <Sam *> calloc(nthreads, sizeof(Sam))
    kbufs = <uint8_t *> malloc(nthreads * T)
    if arenas == NULL or kbufs == NULL:
        free(arenas); free(kbufs)
        raise MemoryError("rosa_match: cannot allocate the per-thread arenas")
    for tid in range(nthreads):
        if sam_alloc(&arenas[tid], bits, 2 * T + 2, T + 1) != 0:
            failed = 1
    if failed:
        for tid in range(nthreads):
            sam_free(&arenas[tid])
        free(arenas); free(kbufs)
        raise MemoryError("rosa_match: cannot allocate the per-thread arenas")
    with nogil:
        for pair in prange(B * R, num_threads=nthreads, schedule="static"):
            tid = threadid()
            b = pair // R
            r = pair % R
            if btr:
                ksrc = &k[b, 0, r]
            else:
                ksrc = &k[b, r, 0]
            gather(ksrc, stride, T, kbufs + tid * T)
            sam_reset(&arenas[tid], mode, 0)
            cfp = NULL
            if want_cf:
                cfp = &cf[pair * nq_max * bits]
            scan_pair(&arenas[tid], &q_sym[b, r, 0], kbufs + tid * T, T, &tau[b, r, 0], cfp)
            if want_cf:
                for i in range(arenas[tid].nq * bits, nq_max * bits):
                    cfp[i] = -1
    for tid in range(nthreads):
        sam_free(&arenas[tid])
    free(arenas)
    free(kbufs)


# ---------------------------------------------------------------- streaming state for inference

cdef class StreamState:
    """Persistent automata for ``n_pairs`` streams (pair = row * routes + route)."""

    cdef Sam *sams
    cdef readonly int64_t n_pairs
    cdef readonly int bits
    cdef int mode

    def __cinit__(self, int64_t n_pairs, int bits, int mode=MODE_HYBRID):
        cdef int64_t p
        self.n_pairs = n_pairs
        self.bits = bits
        self.mode = mode
        self.sams = <Sam *> calloc(n_pairs, sizeof(Sam))
        if self.sams == NULL:
            raise MemoryError("RosaStream: cannot allocate the stream states")
        for p in range(n_pairs):
            if sam_alloc(&self.sams[p], bits, 16, 8) != 0:
                raise MemoryError("RosaStream: cannot allocate the stream states")
            sam_reset(&self.sams[p], mode, 0)

    def __dealloc__(self):
        cdef int64_t p
        if self.sams != NULL:
            for p in range(self.n_pairs):
                sam_free(&self.sams[p])
            free(self.sams)

    def reset(self, const int64_t[::1] skip):
        """Fresh state for every pair; pair p skips positions with time < skip[p]."""
        cdef int64_t p
        for p in range(self.n_pairs):
            sam_reset(&self.sams[p], self.mode, skip[p])

    def scan(self, const uint8_t[:, :, ::1] q, const uint8_t[:, :, ::1] k,
             int32_t[:, :, ::1] tau, int num_threads):
        """Consume one chunk: q, k [B, Tc, R] (pairs in row-major (b, r) order); tau [B, R, Tc]."""
        cdef int64_t B = q.shape[0], Tc = q.shape[1], R = q.shape[2]
        cdef int64_t pair, b, r
        cdef int nthreads = num_threads if num_threads > 0 else 1
        cdef int tid, failed = 0
        cdef uint8_t *bufs = <uint8_t *> malloc(2 * nthreads * Tc)
        if bufs == NULL:
            raise MemoryError("RosaStream.scan: cannot allocate chunk buffers")
        for pair in range(self.n_pairs):
            if sam_reserve(&self.sams[pair], Tc) != 0:
                failed = 1
        if failed:
            free(bufs)
            raise MemoryError("RosaStream.scan: cannot grow the stream states")
        with nogil:
            for pair in prange(B * R, num_threads=nthreads, schedule="static"):
                tid = threadid()
                b = pair // R
                r = pair % R
                gather(&q[b, 0, r], R, Tc, bufs + 2 * tid * Tc)
                gather(&k[b, 0, r], R, Tc, bufs + (2 * tid + 1) * Tc)
                scan_pair(&self.sams[pair], bufs + 2 * tid * Tc, bufs + (2 * tid + 1) * Tc, Tc,
                     &tau[b, r, 0], NULL)
        free(bufs)

    def nbytes(self):
        """Bytes of persistent state actually in use (states and K-runs, not spare capacity)."""
        cdef int64_t p, total = 0
        cdef int64_t per_state
        for p in range(self.n_pairs):
            per_state = (self.sams[p].A + 8) * sizeof(int32_t)
            total += self.sams[p].n_states * per_state + self.sams[p].n_runs * sizeof(int32_t)
            total += sizeof(Sam)
        return total

    def lct_pairs(self):
        """Number of pairs that switched to the link-cut-tree path."""
        cdef int64_t p, n = 0
        for p in range(self.n_pairs):
            n += self.sams[p].lct
        return n
