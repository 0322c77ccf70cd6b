# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native ROSA retrieval kernel (suffix automaton over run-compressed key symbols).

Implements the reference semantics of docs/retrieval.md §3 bit-exactly for every (row, route) pair, without
the GIL, over OpenMP threads (static schedule, one automaton per thread arena, results
independent of the thread count).

One per-pair automaton (``Sam``) serves both training (``match``: a fresh state per pair, with
counterfactuals) and inference (``StreamState``: persistent states fed chunk by chunk).

Layout: state ids, lengths and latest ends are uint16 while a pair's states fit (training at
T <= 32766; a stream widens to int32 in place when it outgrows them), int32 otherwise; the code is
written once over the fused type ``idx_t``. A state is a dense transition row (0 = no transition:
no transition targets the root) plus one 4-field record (link, len, e + 1).

Latest end positions e[v] and context steps have two exact implementations per pair:

* naive: e is updated by a walk from the new state to the root (docs/retrieval.md §3.2, step 5) and a step
  walks suffix links. Cheapest while suffix-link chains are short (random input).
* link-cut tree (LCT, cython_ext/lct.pxi) over the suffix-link tree: extending is one access of the new state plus a
  lazy "max with pos" tag on the root path (positions only grow, so max equals assignment); a
  clone is an edge subdivision (cut + two links); reading e is a splay. A step from a state walks
  no chain: after accessing the state its root path is one splay tree ordered by depth, and
  "has an x-transition" is monotone along it (an ancestor's end set contains the state's), so
  the deepest ancestor with the transition is found by a descent.

A pair starts naive and converts in place to the LCT (O(states)) once its naive chain work exceeds
a budget linear in the positions consumed, so the worst case stays O(T log T). ``mode`` (``PathMode``)
forces either path, and the MODE_WIDE flag forces int32 ids (used by tests).

Only ``rosa_lightning.retrieval._native`` imports this module.
"""
from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    #if defined(__GNUC__)
    #define ROSA_CTZ(x) __builtin_ctz(x)
    #define ROSA_LIKELY(x) __builtin_expect(!!(x), 1)
    #define ROSA_UNLIKELY(x) __builtin_expect(!!(x), 0)
    #else
    static int ROSA_CTZ(unsigned x) { int n = 0; while (!(x & 1u)) { x >>= 1; n++; } return n; }
    #define ROSA_LIKELY(x) (x)
    #define ROSA_UNLIKELY(x) (x)
    #endif
    """
    int ctz "ROSA_CTZ"(uint32_t x) noexcept nogil
    bint likely "ROSA_LIKELY"(bint x) noexcept nogil
    bint unlikely "ROSA_UNLIKELY"(bint x) noexcept nogil

# The path switches of ``match`` and ``StreamState`` (their ``mode`` argument); also a Python enum of this
# module, which is where rosa_lightning.retrieval._native takes the values from.
cpdef enum PathMode:
    MODE_HYBRID = 0
    MODE_NAIVE = 1
    MODE_LCT = 2
    # Flag: use int32 state ids even where uint16 ones fit (tests force the wide layout with it).
    MODE_WIDE = 4
    # Flags of the batch kernel's transition layout (``match``, ``match_into``; a stream is always dense): dense
    # rows at every bit width, or the sparse layout (sparse.pxi) at every width above 4. Without either the
    # layout follows the bit width (sparse from SPARSE_MIN_BITS on).
    MODE_DENSE = 8
    MODE_SPARSE = 16
    # Flag (tests): the generic scan loop (scan_pair) even where the bits-4 naive loop (naive16.pxi) applies.
    MODE_GENERIC = 32

cdef enum:
    MODE_PATH_MASK = 3
    # Naive chain work allowed per consumed position (plus a constant) before switching to the LCT.
    WORK_PER_POS = 24
    WORK_SLACK = 4096
    # uint16 ids: 0xFFFF is the "none" link/LCT pointer, so at most 65535 states (ids 0..65534).
    NARROW_MAX_STATES = 65535

# State ids, lengths and e + 1 are stored in idx_t: uint16 while a pair's states fit (2x denser
# tables, the common training case T <= 32766), int32 otherwise.
ctypedef fused idx_t:
    uint16_t
    int32_t

# Per-state fields (in idx_t units). The transition row is a separate dense array: a transition
# target is never the root, so 0 means "no transition" and a fresh row is all zeros.
cdef enum:
    F_LINK = 0      # suffix link, NIL for the root
    F_LEN = 1       # len of the longest string
    F_N = 2         # e + 1, e = latest end index (a K-run index); 0 = none. LCT node value.
    F_MASK = 3      # bits <= 4: bit x set iff the state has an x-transition (chain walks read
                    # only this record, not transition rows); unused for bits > 4
    INFO_W = 4      # record width: 8 bytes per state with uint16 ids
    MASK_MAX_A = 16 # largest alphabet whose presence mask fits a uint16 field
    # The LCT node value is F_N of the state's record (the naive path reads it there without the tree).
    LCT_VAL_W = INFO_W
    LCT_VAL = F_N
    DESCENT_SPLAY_DEPTH = 4

# The undo journal of streaming rollback (jput, Journal / NoJournal) and the link-cut tree (lct_*: node records
# L[x * LCT_W ...] with L_FA, L_CH, L_TAG; values in I). Functions that write automaton arrays take a ``jr_t *``
# first: ``<NoJournal *> NULL`` in the batch kernel and unjournaled scans (plain stores, the same machine code as
# without a journal), a pair's ``Journal`` in a journaled stream scan.
include "journal.pxi"
include "lct.pxi"


# Alphabet tag of the scan's functions: ``Alpha16`` compiles them for bits = 4 with the alphabet size, the
# bit count and the row width as constants (dense 32-byte uint16 rows set and copied by fixed-size stores,
# index arithmetic by shifts, the per-bit loops unrolled); ``AlphaAny`` reads them from the Sam. Both give the
# same results (``scan_any`` picks the tag).
cdef struct Alpha16:
    int32_t unused


cdef struct AlphaAny:
    int32_t unused


# The sparse transition layout (sparse.pxi, bits > 4, batch kernel only): the root's dense row plus a presence
# bitmap per state and a hash table of the other transitions.
cdef struct AlphaSparse:
    int32_t unused


ctypedef fused al_t:
    Alpha16
    AlphaAny
    AlphaSparse


cdef struct Sam:
    int32_t A            # alphabet size 2**bits
    int32_t bits
    int32_t wide         # 1: int32 ids; 0: uint16 ids
    int64_t cap          # state capacity
    int64_t run_cap      # K-run capacity
    int32_t n_states
    int32_t last
    void *nxt            # idx_t [cap * A] dense transitions, 0 = none; sparse: [A], the root's row only
    void *info           # idx_t [cap * INFO_W]: link, len, e + 1 of each state in one record
    void *lctn           # idx_t [cap * LCT_W]: LCT node records (fa, ch0, ch1, tag)
    int32_t *run_start   # [run_cap] start time of each K-run
    int32_t n_runs
    int32_t st           # context state
    int32_t adv
    int32_t lastq        # -1 before the first position
    int32_t lastk
    int32_t nq           # Q-runs seen
    int32_t lct          # 1 once in LCT mode
    int32_t mode         # MODE_HYBRID / MODE_NAIVE / MODE_LCT
    int32_t generic      # 1: MODE_GENERIC (never scan_naive16)
    int64_t length       # positions consumed (absolute time of the next position)
    int64_t skip         # positions with time < skip are padding
    int64_t work         # naive chain steps so far
    int32_t sparse       # 1: the sparse layout (sparse.pxi): nxt is the root's row, bm and ht hold the rest
    uint32_t ht_mask     # hash table slots - 1 (a power of two minus one)
    uint32_t ht_epoch    # the epoch in the top key byte (0 with wide ids)
    uint32_t ht_emask    # 0xFF000000 when keys carry an epoch, else 0
    int32_t ht_shift     # 32 - log2(slots): the multiplicative hash keeps the top bits
    uint64_t *bm         # sparse: [cap * BM_W] presence bitmap of each state's transitions
    uint32_t *ht         # sparse: [2 * slots] (key, target) pairs, key = state << 8 | symbol, 0 = empty slot
    int32_t group_rows   # 1: a batch arena, whose bits-8 rows scan_naive256 may keep valid only group by group
    # Keeps the scalars above (written every position) off the cache lines of the neighbouring
    # Sam in an array: per-thread arenas and stream pairs are adjacent (no false sharing).
    char _pad[128]


cdef inline size_t id_size(Sam *S) noexcept nogil:
    return sizeof(int32_t) if S.wide else sizeof(uint16_t)


cdef int sam_alloc(Sam *S, int bits, int64_t cap, int64_t run_cap, int wide, int with_lct,
                   int sparse) noexcept nogil:
    """Allocate arrays (the LCT records only if with_lct; otherwise on the switch to the LCT); ``sparse``
    selects the sparse transition layout (for a batch arena of fixed capacity: it cannot grow, see
    sparse.pxi). Returns 0 on success, -1 when out of memory."""
    cdef size_t z
    S.bits = bits
    S.A = 1 << bits
    S.wide = 1 if (wide or cap > NARROW_MAX_STATES) else 0
    z = id_size(S)
    S.cap = cap
    S.run_cap = run_cap
    S.sparse = 0
    S.group_rows = 0
    S.bm = NULL
    S.ht = NULL
    if sparse:
        if sparse_alloc(S) != 0:
            return -1
        S.nxt = malloc(S.A * z)
    else:
        S.nxt = malloc(cap * S.A * z)
    S.info = malloc(cap * INFO_W * z)
    S.lctn = malloc(cap * LCT_W * z) if with_lct else NULL
    S.run_start = <int32_t *> malloc(run_cap * sizeof(int32_t))
    if S.nxt == NULL or S.info == NULL or (with_lct and S.lctn == NULL) or S.run_start == NULL:
        return -1
    return 0


cdef int64_t sam_bytes(Sam *S) noexcept nogil:
    """Bytes allocated for S's arrays (capacity, not use)."""
    cdef int64_t z = id_size(S)
    cdef int64_t n = (S.A if S.sparse else S.cap * S.A) * z + S.cap * INFO_W * z + S.run_cap * sizeof(int32_t)
    if S.lctn != NULL:
        n += S.cap * LCT_W * z
    if S.sparse:
        n += S.cap * BM_W * sizeof(uint64_t) + 2 * (<int64_t> S.ht_mask + 1) * sizeof(uint32_t)
    return n


cdef void sam_free(Sam *S) noexcept nogil:
    free(S.nxt); free(S.info); free(S.lctn); free(S.run_start); free(S.bm); free(S.ht)
    S.nxt = NULL; S.info = NULL; S.lctn = NULL; S.run_start = NULL; S.bm = NULL; S.ht = NULL


cdef int sam_widen(Sam *S) noexcept nogil:
    """Convert a uint16 pair to int32 ids in place (NIL 0xFFFF becomes -1); 0 or -1 (memory)."""
    cdef int64_t cap = S.cap, i
    cdef uint16_t *a16
    cdef int32_t *a32
    cdef uint16_t u
    if S.wide:
        return 0
    a16 = <uint16_t *> S.nxt
    a32 = <int32_t *> malloc(cap * S.A * sizeof(int32_t))
    if a32 == NULL: return -1
    for i in range(S.n_states * S.A):
        a32[i] = a16[i]
    free(S.nxt); S.nxt = a32
    a16 = <uint16_t *> S.info
    a32 = <int32_t *> malloc(cap * INFO_W * sizeof(int32_t))
    if a32 == NULL: return -1
    for i in range(S.n_states * INFO_W):
        u = a16[i]
        a32[i] = -1 if (i % INFO_W == F_LINK and u == 0xFFFF) else u
    free(S.info); S.info = a32
    if S.lctn != NULL:
        a16 = <uint16_t *> S.lctn
        a32 = <int32_t *> malloc(cap * LCT_W * sizeof(int32_t))
        if a32 == NULL: return -1
        for i in range(S.n_states * LCT_W):
            u = a16[i]
            a32[i] = -1 if (i % LCT_W != L_TAG and u == 0xFFFF) else u
        free(S.lctn); S.lctn = a32
    S.wide = 1
    return 0


cdef int sam_reserve(Sam *S, int64_t more_positions) noexcept nogil:
    """Grow capacity so that ``more_positions`` further positions fit (at most 2 states each);
    widens uint16 ids to int32 when the states could outgrow them."""
    cdef int64_t need = S.n_states + 2 * more_positions + 2
    cdef int64_t need_runs = S.n_runs + more_positions + 1
    cdef int64_t c
    cdef size_t z
    cdef void *p
    if S.sparse:
        return 0 if (need <= S.cap and need_runs <= S.run_cap) else -1   # fixed capacity (sparse.pxi)
    if not S.wide and need > NARROW_MAX_STATES:
        if sam_widen(S) != 0:
            return -1
    z = id_size(S)
    if need > S.cap:
        c = S.cap * 2
        if c < need:
            c = need
        if not S.wide and c > NARROW_MAX_STATES:
            c = NARROW_MAX_STATES
        p = realloc(S.nxt, c * S.A * z)
        if p == NULL: return -1
        S.nxt = p
        p = realloc(S.info, c * INFO_W * z)
        if p == NULL: return -1
        S.info = p
        if S.lctn != NULL:
            p = realloc(S.lctn, c * LCT_W * z)
            if p == NULL: return -1
            S.lctn = p
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


cdef inline int32_t new_state(al_t *al, Sam *S, idx_t *nx, int32_t slen, idx_t link, idx_t n) noexcept nogil:
    cdef int32_t v = S.n_states
    cdef idx_t *I = <idx_t *> S.info
    cdef idx_t *L
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    S.n_states += 1
    if al_t is AlphaSparse:
        sparse_new_state(S, v)
    else:
        memset(nx + <int64_t> v * A, 0, A * sizeof(idx_t))
    I[v * INFO_W + F_LINK] = link
    I[v * INFO_W + F_LEN] = <idx_t> slen
    I[v * INFO_W + F_N] = n
    I[v * INFO_W + F_MASK] = 0
    if S.lct:
        lct_node_init(<NoJournal *> NULL, <idx_t *> S.lctn, <idx_t> v, <idx_t> -1)  # a new node: no entry
    return v


cdef void sam_reset(Sam *S, int mode, int64_t skip) noexcept nogil:
    """Empty automaton (root only) and a fresh scan state."""
    S.n_states = 0
    S.mode = mode & MODE_PATH_MASK
    S.generic = 1 if (mode & MODE_GENERIC) else 0
    S.lct = 1 if S.mode == MODE_LCT else 0
    if S.wide:
        new_state(<AlphaAny *> NULL, S, <int32_t *> S.nxt, 0, -1, 0)
    else:
        new_state(<AlphaAny *> NULL, S, <uint16_t *> S.nxt, 0, <uint16_t> 0xFFFF, 0)
    S.last = 0
    S.n_runs = 0
    S.st = 0
    S.adv = 0
    S.lastq = -1
    S.lastk = -1
    S.nq = 0
    S.length = 0
    S.skip = skip
    S.work = 0
    if S.sparse:
        sparse_reset(S)


# The sparse layout's table and the layout accessors of the automaton code (tr_get, tr_exists, has_trans, tr_add,
# tr_redirect, tr_copy).
include "sparse.pxi"


# ---------------------------------------------------------------- link-cut tree (lct.pxi) on the automaton

cdef void lct_enable(jr_t *jr, Sam *S, idx_t *nx) noexcept nogil:
    """Switch a pair to LCT mode: every suffix link becomes a path-parent pointer. If the LCT
    records cannot be allocated the pair stays on the naive path (exact, only slower)."""
    cdef idx_t *I = <idx_t *> S.info
    cdef idx_t *L
    cdef int32_t v
    if S.lctn == NULL:
        S.lctn = malloc(S.cap * LCT_W * sizeof(idx_t))
        if S.lctn == NULL:
            S.mode = MODE_NAIVE
            return
    L = <idx_t *> S.lctn
    for v in range(S.n_states):
        lct_node_init(jr, L, <idx_t> v, I[v * INFO_W + F_LINK])
    S.lct = 1


# ---------------------------------------------------------------- automaton

cdef void extend(al_t *al, jr_t *jr, Sam *S, idx_t *nx, int32_t x, int32_t pos) noexcept nogil:
    """Append symbol x at K-run index pos (docs/retrieval.md §3.2)."""
    cdef idx_t *I = <idx_t *> S.info
    cdef idx_t *L = <idx_t *> S.lctn
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    cdef idx_t NIL = <idx_t> -1
    cdef idx_t cur = <idx_t> new_state(al, S, nx, I[S.last * INFO_W + F_LEN] + 1, NIL, 0)
    cdef idx_t v = <idx_t> S.last
    cdef idx_t w, clone
    cdef int64_t steps
    while v != NIL and not tr_exists(al, S, nx, v, x):
        tr_add(al, jr, S, nx, I, v, x, cur)
        v = I[v * INFO_W + F_LINK]
    if v == NIL:
        jput(jr, &I[cur * INFO_W + F_LINK], 0)
    else:
        w = <idx_t> tr_get_present(al, S, nx, v, x)
        if I[v * INFO_W + F_LEN] + 1 == I[w * INFO_W + F_LEN]:
            jput(jr, &I[cur * INFO_W + F_LINK], w)
        else:
            if S.lct:
                lct_cut(jr, L, I, w)  # also makes e[w] exact
            clone = <idx_t> new_state(al, S, nx, I[v * INFO_W + F_LEN] + 1, I[w * INFO_W + F_LINK],
                                      I[w * INFO_W + F_N])
            tr_copy(al, S, nx, I, clone, w)
            while v != NIL and tr_get(al, S, nx, v, x) == w:
                tr_redirect(al, jr, S, nx, v, x, clone)
                v = I[v * INFO_W + F_LINK]
            jput(jr, &I[w * INFO_W + F_LINK], clone)
            jput(jr, &I[cur * INFO_W + F_LINK], clone)
            if S.lct:
                jput(jr, &L[clone * LCT_W + L_FA], I[clone * INFO_W + F_LINK])
                jput(jr, &L[w * LCT_W + L_FA], clone)
    S.last = cur
    if S.lct:
        jput(jr, &L[cur * LCT_W + L_FA], I[cur * INFO_W + F_LINK])
        lct_access(jr, L, I, cur)
        lct_apply(jr, L, I, cur, <idx_t> (pos + 1))
    else:
        # Every chain ends at the root, whose e is never read (no transition targets it).
        v = cur
        steps = 0
        while v != 0:
            jput(jr, &I[v * INFO_W + F_N], <idx_t> (pos + 1))
            v = I[v * INFO_W + F_LINK]
            steps += 1
        S.work += steps


cdef inline idx_t lct_deepest_with(al_t *al, jr_t *jr, Sam *S, idx_t *L, idx_t *I, idx_t *nx, int64_t A,
                                   idx_t *top, int32_t x) noexcept nogil:
    """In the splay tree of an accessed root path (rooted at top[0]), the deepest node having an
    x-transition (the root always has one here). A descent deeper than READ_SPLAY_DEPTH splays
    the deepest node visited to pay for itself, and top[0] becomes the new splay root; shallower
    descents leave the tree as it is (constant cost)."""
    cdef idx_t y = top[0]
    cdef idx_t best = 0, deepest = y
    cdef int d = 0
    while y != <idx_t> -1:
        deepest = y
        d += 1
        if has_trans(al, S, nx, I, A, y, x):
            best = y
            y = L[y * LCT_W + L_CH + 1]
        else:
            y = L[y * LCT_W + L_CH]
    if d > DESCENT_SPLAY_DEPTH:
        lct_splay(jr, L, I, deepest)
        top[0] = deepest
    return best


cdef inline int32_t step(al_t *al, jr_t *jr, Sam *S, idx_t *nx, int32_t v, int32_t x) noexcept nogil:
    """docs/retrieval.md §3.3 step(v, x): the x-successor of the deepest suffix-link ancestor having one;
    0 = none (a transition never targets the root)."""
    cdef idx_t *I = <idx_t *> S.info
    cdef idx_t *L
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    cdef idx_t u = <idx_t> v, best, top
    cdef int32_t t
    if nx[x] == 0:                          # the root lies on every chain: O(1) failure
        return 0
    t = tr_get(al, S, nx, u, x)
    if likely(t != 0):
        return t
    if not S.lct:
        u = I[u * INFO_W + F_LINK]
        while not has_trans(al, S, nx, I, A, u, x):
            u = I[u * INFO_W + F_LINK]
            S.work += 1
        return tr_get_present(al, S, nx, u, x)
    L = <idx_t *> S.lctn
    lct_access(jr, L, I, u)
    top = u
    best = lct_deepest_with(al, jr, S, L, I, nx, A, &top, x)
    return tr_get_present(al, S, nx, best, x)


cdef inline int32_t dest_time(jr_t *jr, Sam *S, idx_t *nx, int32_t ns) noexcept nogil:
    """Start time of the run after the latest end of state ns, or -1 (not visible / no state)."""
    cdef idx_t *I = <idx_t *> S.info
    cdef int32_t n
    if ns == 0:
        return -1
    if S.lct:
        n = lct_value(jr, <idx_t *> S.lctn, I, <idx_t> ns)
    else:
        n = I[ns * INFO_W + F_N]
    if n < S.n_runs:
        return S.run_start[n]
    return -1


cdef int32_t probe_flips(al_t *al, jr_t *jr, Sam *S, idx_t *nx, int32_t v, int32_t a, uint32_t flips,
                        int32_t *out) noexcept nogil:
    """out[j] = dest_time(step(v, a ^ (1 << j))) for every bit j: the flipped counterfactuals.

    Naive mode walks v's suffix-link chain once for all bits. With presence masks (bits <= 4,
    ``flips`` = the set of flipped symbols) or the sparse layout the same walk also resolves step(v, a),
    returned (0 = none); otherwise returns -1 (not computed)."""
    cdef idx_t *I = <idx_t *> S.info
    cdef idx_t *L
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    cdef int32_t bits = 4 if al_t is Alpha16 else S.bits
    cdef int32_t ns[8]
    cdef int32_t j, x, n
    cdef int32_t pending = 0
    cdef const idx_t *row = NULL if al_t is AlphaSparse else nx + <int64_t> v * A
    cdef idx_t u, top, best
    cdef uint32_t pend, hit
    cdef int32_t nsx[MASK_MAX_A]
    if al_t is AlphaSparse:
        return probe_sparse(jr, S, nx, v, a, out)
    if A <= MASK_MAX_A and not S.lct:
        # Naive path on presence masks: symbol sets instead of per-bit loops, one 8-byte record
        # per chain state; a flipped symbol is found somewhere on the chain iff the root has it.
        flips |= 1u << a
        u = <idx_t> v
        hit = flips & I[u * INFO_W + F_MASK]
        pend = flips & ~hit & I[F_MASK]
        while True:
            while hit:
                x = ctz(hit)
                hit &= hit - 1
                nsx[x] = nx[u * A + x]
            if not pend:
                break
            u = I[u * INFO_W + F_LINK]
            S.work += 1
            hit = I[u * INFO_W + F_MASK] & pend
            pend &= ~hit
        flips &= I[F_MASK]
        for j in range(bits):
            x = a ^ (1 << j)
            if (flips >> x) & 1:
                n = I[nsx[x] * INFO_W + F_N]
                out[j] = S.run_start[n] if n < S.n_runs else -1
            else:
                out[j] = -1
        return nsx[a] if (flips >> a) & 1 else 0
    for j in range(bits):
        x = a ^ (1 << j)
        ns[j] = row[x]
        if ns[j] == 0 and nx[x] != 0:       # not at v, but the root has it: look up the chain
            pending |= 1 << j
    if pending:
        if S.lct:
            # One access of v serves every probe: splaying within v's root-path tree keeps its nodes.
            L = <idx_t *> S.lctn
            lct_access(jr, L, I, <idx_t> v)
            top = <idx_t> v
            for j in range(bits):
                if (pending >> j) & 1:
                    x = a ^ (1 << j)
                    best = lct_deepest_with(al, jr, S, L, I, nx, A, &top, x)
                    ns[j] = tr_get_present(al, S, nx, best, x)
        else:
            u = <idx_t> v
            while pending:
                u = I[u * INFO_W + F_LINK]
                S.work += 1
                row = nx + u * A
                for j in range(bits):
                    if (pending >> j) & 1 and row[a ^ (1 << j)] != 0:
                        ns[j] = row[a ^ (1 << j)]
                        pending &= ~(1 << j)
    for j in range(bits):
        out[j] = dest_time(jr, S, nx, ns[j])
    return -1


cdef void scan_pair(al_t *al, jr_t *jr, Sam *S, idx_t *nx, const uint8_t *q, const uint8_t *k, int64_t n,
                    int32_t *tau, int32_t *cf) noexcept nogil:
    """Consume n positions (docs/retrieval.md §3.4, the scan body); writes tau[0..n) and, if cf != NULL, the
    flipped-bit counterfactual times of every Q-run started here at cf[(Q-run index) * bits + j]."""
    cdef int64_t i
    cdef int32_t a, x, ns, pre, j
    cdef int32_t bits = 4 if al_t is Alpha16 else S.bits
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    cdef uint32_t flipset[MASK_MAX_A]
    if A <= MASK_MAX_A:
        for a in range(A):
            flipset[a] = 0
            for j in range(bits):
                flipset[a] |= 1u << (a ^ (1 << j))
    for i in range(n):
        if unlikely(S.length < S.skip):
            tau[i] = -1
            S.length += 1
            continue
        x = k[i]
        if x != S.lastk:
            S.lastk = x
            S.run_start[S.n_runs] = <int32_t> S.length
            S.n_runs += 1
            extend(al, jr, S, nx, x, S.n_runs - 1)
        a = q[i]
        if a != S.lastq:
            S.lastq = a
            S.adv = 0
            pre = -1
            if cf != NULL:
                pre = probe_flips(al, jr, S, nx, S.st, a, flipset[a] if A <= MASK_MAX_A else 0,
                                  cf + <int64_t> S.nq * bits)
            S.nq += 1
            ns = pre if pre >= 0 else step(al, jr, S, nx, S.st, a)
            tau[i] = dest_time(jr, S, nx, ns)
            if ns != 0:
                S.st = ns
                S.adv = 1
        elif S.adv:
            # The context ends in a and runs never repeat a symbol: the walk ends at the root.
            tau[i] = dest_time(jr, S, nx, nx[a])
        else:
            ns = step(al, jr, S, nx, S.st, a)
            tau[i] = dest_time(jr, S, nx, ns)
            if ns != 0:
                S.st = ns
                S.adv = 1
        S.length += 1
        if not S.lct and S.mode == MODE_HYBRID:
            if unlikely(S.work > WORK_SLACK + WORK_PER_POS * S.length):
                lct_enable(jr, S, nx)


# scan_naive16: the naive bits-4 scan of a narrow, unjournaled pair in one loop (the common training case);
# scan_naive256: the same at bits = 8 for batch pairs, with rows zeroed group by group.
include "naive16.pxi"
include "naive256.pxi"


cdef inline void scan_any(jr_t *jr, Sam *S, const uint8_t *q, const uint8_t *k, int64_t n,
                          int32_t *tau, int32_t *cf) noexcept nogil:
    cdef int64_t done = 0, pad
    if jr_t is NoJournal:
        if (naive16_applies(S) or naive256_applies(S)) and not S.generic:
            if S.length < S.skip:         # padding first, on the generic path
                pad = min(n, S.skip - S.length)
                if S.A == 16:
                    scan_pair(<Alpha16 *> NULL, jr, S, <uint16_t *> S.nxt, q, k, pad, tau, cf)
                else:
                    scan_pair(<AlphaAny *> NULL, jr, S, <uint16_t *> S.nxt, q, k, pad, tau, cf)
                done = pad
            if done < n:
                if S.A == 16:
                    done += scan_naive16(S, q + done, k + done, n - done, tau + done, cf)
                else:
                    done += scan_naive256(S, q + done, k + done, n - done, tau + done, cf)
            if done == n:
                return
            q += done
            k += done
            tau += done
            n -= done
    if S.sparse:
        if S.wide:
            scan_pair(<AlphaSparse *> NULL, jr, S, <int32_t *> S.nxt, q, k, n, tau, cf)
        else:
            scan_pair(<AlphaSparse *> NULL, jr, S, <uint16_t *> S.nxt, q, k, n, tau, cf)
    elif S.A == 16:
        if S.wide:
            scan_pair(<Alpha16 *> NULL, jr, S, <int32_t *> S.nxt, q, k, n, tau, cf)
        else:
            scan_pair(<Alpha16 *> NULL, jr, S, <uint16_t *> S.nxt, q, k, n, tau, cf)
    elif S.wide:
        scan_pair(<AlphaAny *> NULL, jr, S, <int32_t *> S.nxt, q, k, n, tau, cf)
    else:
        scan_pair(<AlphaAny *> NULL, jr, S, <uint16_t *> S.nxt, q, k, n, tau, cf)


# ---------------------------------------------------------------- batched training entry points

cdef inline const uint8_t *pair_row(const uint8_t[:, :, ::1] a, bint btr, int64_t b, int64_t r) noexcept nogil:
    """The first symbol of pair (b, r) of a ([B, T, R] if btr, else [B, R, T])."""
    return &a[b, 0, r] if btr else &a[b, r, 0]


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
    cdef uint8_t *dst
    stride = R if btr else 1
    with nogil:
        for pair in prange(B * R, num_threads=num_threads, schedule="static"):
            b = pair // R
            r = pair % R
            dst = &q_sym[b, r, 0]
            gather(pair_row(q, btr, b, r), stride, T, dst)
            runs = 1
            for t in range(1, T):
                if dst[t] != dst[t - 1]:
                    runs = runs + 1
            num_q_runs[b, r] = runs


# The pipeline's entry points: count_q_runs, match_into (narrow outputs into caller buffers, cached arenas).
include "match_into.pxi"


def match(const uint8_t[:, :, ::1] q_sym, const uint8_t[:, :, ::1] k, bint btr, int bits,
          int32_t[:, :, ::1] tau, int32_t[::1] cf, int64_t nq_max, bint want_cf,
          int num_threads, int mode):
    """Run the scan for every pair. q_sym: [B, R, T]; k: [B, T, R] if btr else [B, R, T].

    Writes tau [B, R, T] and, when want_cf, cf (flat [B, R, nq_max, bits]; every entry is written).
    One arena per thread: match_into's cached arenas (kept between calls, ``release_arenas`` frees them), or arenas
    of this call's own when another thread is using the cache. Pairs are handed to threads one at a time.
    """
    cdef int64_t B = tau.shape[0], R = tau.shape[1], T = tau.shape[2]
    cdef int64_t pair, b, r, i, stride = R if btr else 1
    cdef int nthreads = max(1, num_threads), tid
    cdef Arenas own
    cdef Arenas *ar
    cdef bint cached = False
    cdef Sam *S
    cdef uint8_t *kbufs
    cdef int32_t *cfp
    if B * R == 0 or T == 0:
        return
    if nthreads > B * R:
        nthreads = <int> (B * R)
    kbufs = <uint8_t *> malloc(nthreads * T)
    if kbufs == NULL:
        raise MemoryError("rosa_match: cannot allocate the per-thread key buffers")
    try:
        ar = arenas_acquire(&own, nthreads, bits, T, mode, &cached, "rosa_match")
    except MemoryError:
        free(kbufs)
        raise
    try:
        with nogil:
            for pair in prange(B * R, num_threads=nthreads, schedule="dynamic", chunksize=1):
                tid = threadid()
                S = &ar.sams[tid]
                b = pair // R
                r = pair % R
                gather(pair_row(k, btr, b, r), stride, T, kbufs + tid * T)
                sam_reset(S, mode, 0)
                cfp = NULL
                if want_cf:
                    cfp = &cf[pair * nq_max * bits]
                scan_any(<NoJournal *> NULL, S, &q_sym[b, r, 0], kbufs + tid * T, T, &tau[b, r, 0], cfp)
                if want_cf:
                    for i in range(S.nq * bits, nq_max * bits):
                        cfp[i] = -1
    finally:
        arenas_release(&own, cached)
        free(kbufs)


# ---------------------------------------------------------------- streaming state for inference

cdef class StreamState:
    """Persistent automata for ``n_pairs`` streams (pair = row * routes + route).

    Rollback: a scan with ``journal=True`` records, per pair, every write it makes to the automaton arrays
    (journal.pxi) and the pair's scalar state before each of its positions (a copy of the ``Sam`` record);
    ``rollback(k)`` then undoes the last k positions of that scan exactly. The next scan, journaled or not,
    discards the journal (commits)."""

    cdef Sam *sams
    cdef Journal *journals
    cdef Sam *marks              # [n_pairs * mark_cap]: pair p's state before position i of the journaled scan
    cdef int64_t *mark_n         # [n_pairs * mark_cap]: its journal's entry count there
    cdef int64_t mark_cap
    cdef readonly int64_t journal_positions   # positions of the last scan that can still be rolled back
    cdef readonly int64_t n_pairs
    cdef readonly int bits
    cdef int mode

    def __cinit__(self, int64_t n_pairs, int bits, int mode=MODE_HYBRID):
        cdef int64_t p
        self.n_pairs = n_pairs
        self.bits = bits
        self.mode = mode
        self.journal_positions = 0
        self.mark_cap = 0
        self.marks = NULL
        self.mark_n = NULL
        self.sams = <Sam *> calloc(n_pairs, sizeof(Sam))
        self.journals = <Journal *> calloc(n_pairs, sizeof(Journal))
        if self.sams == NULL or self.journals == NULL:
            raise MemoryError("RosaStream: cannot allocate the stream states")
        for p in range(n_pairs):
            if sam_alloc(&self.sams[p], bits, 16, 8, mode & MODE_WIDE,
                         (mode & MODE_PATH_MASK) == MODE_LCT, 0) != 0:   # streams: dense rows
                raise MemoryError("RosaStream: cannot allocate the stream states")
            sam_reset(&self.sams[p], mode, 0)

    def __dealloc__(self):
        cdef int64_t p
        if self.sams != NULL:
            for p in range(self.n_pairs):
                sam_free(&self.sams[p])
            free(self.sams)
        if self.journals != NULL:
            for p in range(self.n_pairs):
                journal_free(&self.journals[p])
            free(self.journals)
        free(self.marks)
        free(self.mark_n)

    def reset(self, const int64_t[::1] skip):
        """Fresh state for every pair; pair p skips positions with time < skip[p]. Discards the journal."""
        cdef int64_t p
        for p in range(self.n_pairs):
            sam_reset(&self.sams[p], self.mode, skip[p])
        self._commit()

    cdef void _commit(self) noexcept:
        cdef int64_t p
        for p in range(self.n_pairs):
            self.journals[p].n = 0
            self.journals[p].oom = 0
        self.journal_positions = 0

    def commit(self):
        """Discard the journal: the positions scanned so far can no longer be rolled back."""
        self._commit()

    def scan(self, const uint8_t[:, :, ::1] q, const uint8_t[:, :, ::1] k,
             int32_t[:, :, ::1] tau, int num_threads, bint journal=False):
        """Consume one chunk: q, k [B, Tc, R] (pairs in row-major (b, r) order); tau [B, R, Tc].

        With ``journal`` the chunk can be rolled back afterwards (``rollback``); either way the journal of the
        previous scan is discarded first."""
        cdef int64_t B = q.shape[0], Tc = q.shape[1], R = q.shape[2]
        cdef int64_t pair, b, r, i
        cdef int nthreads = num_threads if num_threads > 0 else 1
        cdef int tid, failed = 0
        cdef uint8_t *bufs
        cdef Sam *mk
        cdef int64_t *mn
        cdef Journal *jr
        self._commit()
        if journal and Tc > self.mark_cap:
            mk = <Sam *> realloc(self.marks, self.n_pairs * Tc * sizeof(Sam))
            if mk != NULL:
                self.marks = mk
            mn = <int64_t *> realloc(self.mark_n, self.n_pairs * Tc * sizeof(int64_t))
            if mn != NULL:
                self.mark_n = mn
            if mk == NULL or mn == NULL:
                raise MemoryError("RosaStream.scan: cannot allocate the rollback marks")
            self.mark_cap = Tc
        bufs = <uint8_t *> malloc(2 * nthreads * Tc)
        if bufs == NULL:
            raise MemoryError("RosaStream.scan: cannot allocate chunk buffers")
        # Capacity first: a journaled scan must not move the arrays it records addresses in.
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
                if not journal:
                    scan_any(<NoJournal *> NULL, &self.sams[pair], bufs + 2 * tid * Tc,
                             bufs + (2 * tid + 1) * Tc, Tc, &tau[b, r, 0], NULL)
                else:
                    jr = &self.journals[pair]
                    for i in range(Tc):
                        memcpy(&self.marks[pair * self.mark_cap + i], &self.sams[pair], sizeof(Sam))
                        self.mark_n[pair * self.mark_cap + i] = jr.n
                        scan_any(jr, &self.sams[pair], bufs + 2 * tid * Tc + i,
                                 bufs + (2 * tid + 1) * Tc + i, 1, &tau[b, r, i], NULL)
        free(bufs)
        if journal:
            self.journal_positions = Tc

    def rollback(self, int64_t k):
        """Undo the last ``k`` positions of the last (journaled) scan: every pair is left exactly as after its
        first ``Tc - k`` positions. Raises ValueError when those positions were not journaled, MemoryError
        when a journal could not grow during the scan."""
        cdef int64_t p, keep
        cdef Sam *S
        cdef Sam *m
        cdef void *nxt
        cdef void *info
        cdef void *lctn
        cdef int32_t *run_start
        cdef int64_t cap, run_cap
        if not rollback_wanted(self.journals, self.n_pairs, k, self.journal_positions, "RosaStream.rollback"):
            return
        keep = self.journal_positions - k
        for p in range(self.n_pairs):
            S = &self.sams[p]
            m = &self.marks[p * self.mark_cap + keep]
            journal_undo(&self.journals[p], self.mark_n[p * self.mark_cap + keep])
            # The mark's scalars; the arrays stay where they are now (capacities only grow, and an LCT
            # record array allocated after the mark is kept for reuse).
            nxt, info, lctn, run_start = S.nxt, S.info, S.lctn, S.run_start
            cap, run_cap = S.cap, S.run_cap
            memcpy(S, m, sizeof(Sam))
            S.nxt, S.info, S.lctn, S.run_start = nxt, info, lctn, run_start
            S.cap, S.run_cap = cap, run_cap
        self.journal_positions = keep

    def nbytes(self):
        """Bytes of persistent state actually in use (states and K-runs, not spare capacity):
        per state the transition row and the record, plus the LCT record once a pair uses it."""
        cdef int64_t p, total = 0
        cdef int64_t per_state
        cdef Sam *S
        for p in range(self.n_pairs):
            S = &self.sams[p]
            per_state = (S.A + INFO_W + (LCT_W if S.lctn != NULL else 0)) * id_size(S)
            total += S.n_states * per_state + S.n_runs * sizeof(int32_t)
            total += sizeof(Sam)
        return total

    def journal_nbytes(self):
        """Bytes allocated for rollback (journals and position marks); 0 until a journaled scan."""
        cdef int64_t p, total = self.mark_cap * self.n_pairs * (sizeof(Sam) + sizeof(int64_t))
        for p in range(self.n_pairs):
            total += self.journals[p].cap * sizeof(JEntry)
        return total

    def wide_pairs(self):
        """Number of pairs whose state ids are int32 (the rest use uint16)."""
        cdef int64_t p, n = 0
        for p in range(self.n_pairs):
            n += self.sams[p].wide
        return n

    def lct_pairs(self):
        """Number of pairs that switched to the link-cut-tree path."""
        cdef int64_t p, n = 0
        for p in range(self.n_pairs):
            n += self.sams[p].lct
        return n
