# The sparse transition layout of the batch kernel (included by rosa_sam.pyx), and the layout accessors that the
# automaton code calls for both layouts.
#
# Dense rows cost 2^bits ids per state: 512 bytes at bits = 8 (16.8 MB per thread arena at T = 16384), though a
# state has about 2 transitions on average. The sparse layout keeps
#
#   * the root's transitions in a dense row (``nxt``, 2^bits ids): the root lies on every suffix-link chain, so
#     "does x occur at all" stays one load, and the root never enters the table;
#   * a presence bitmap per state (``bm``, BM_W words of 64 bits, one bit per symbol): "has v an x-transition" is one
#     bit test, which is what the chain walks, the LCT descents and the counterfactual probes ask most;
#   * the targets of the other states' transitions in one open-addressing hash table (``ht``, linear probing),
#     keyed by (state, symbol). Transitions are only added or redirected, never removed, so no deletion marks are
#     needed. A suffix automaton of n symbols has at most 3n - 4 transitions (n >= 3), so 4 * run_cap slots keep
#     the load at most 3/4 for the whole arena (its capacity is fixed: a sparse Sam does not grow).
#
# A table is emptied per pair without a memset while state ids fit 16 bits: a key holds an epoch in its top byte
# (1..255) and a slot of another epoch counts as empty, so only every 255th pair clears the table. With wider ids
# the epoch is 0 and each pair clears it.
#
# Only the batch kernel (``match``, ``match_into``) uses this layout; streams keep dense rows (their journaled
# rollback records writes to the dense arrays only), so the table is written with plain stores.

cdef extern from *:
    """
    #if defined(__GNUC__)
    #define ROSA_CTZ64(x) __builtin_ctzll(x)
    #else
    static int ROSA_CTZ64(unsigned long long x) { int n = 0; while (!(x & 1ull)) { x >>= 1; n++; } return n; }
    #endif
    """
    int ctz64 "ROSA_CTZ64"(uint64_t x) noexcept nogil


cdef enum:
    # Default layout by bit width: sparse from this width on, dense rows below (measured in
    # experiments/retrieval_throughput/README.md).
    SPARSE_MIN_BITS = 9             # 9: never by default (not faster in CPU time on the measured machine); MODE_SPARSE selects it
    SPARSE_MAX_STATES = 1 << 24     # a key holds the state id in 24 bits
    EPOCH_MAX_STATES = 1 << 16      # below this the top key byte is free for the epoch
    HASH_MUL = 2654435769           # 2^32 / golden ratio (multiplicative hashing, top bits)
    BM_W = 4                        # 64-bit words per bitmap: 256 symbols at any width (a constant stride)


cdef inline bint want_sparse(int bits, int64_t cap, int mode) noexcept nogil:
    """Whether a batch arena of ``cap`` states uses the sparse layout: never at bits <= 4 (presence masks in the
    record already make their 16..32-byte rows cheap) and never with MODE_DENSE; always with MODE_SPARSE;
    otherwise from SPARSE_MIN_BITS on."""
    if bits <= 4 or cap >= SPARSE_MAX_STATES or (mode & MODE_DENSE):
        return False
    return (mode & MODE_SPARSE) != 0 or bits >= SPARSE_MIN_BITS


# Tests only (_test_sparse_table_slots): a fixed table size below what the arena needs, to break the load invariant.
cdef int64_t _table_slots_override = 0


cdef int sparse_alloc(Sam *S) noexcept nogil:
    """Bitmaps for S.cap states and a table for the transitions of S.run_cap - 1 symbols; 0 or -1 (memory)."""
    cdef int64_t slots = 16
    cdef int lg = 4
    while slots < (_table_slots_override if _table_slots_override > 0 else 4 * S.run_cap):
        slots *= 2
        lg += 1
    S.bm = <uint64_t *> malloc(S.cap * BM_W * sizeof(uint64_t))
    S.ht = <uint32_t *> calloc(2 * slots, sizeof(uint32_t))
    S.ht_mask = <uint32_t> (slots - 1)
    S.ht_shift = 32 - lg
    S.ht_epoch = 0
    S.ht_emask = 0xFF000000u if S.cap <= EPOCH_MAX_STATES else 0
    S.sparse = 1
    return 0 if (S.bm != NULL and S.ht != NULL) else -1


cdef inline void sparse_reset(Sam *S) noexcept nogil:
    """An empty table (the next epoch, or a cleared table) and the root's empty bitmap."""
    cdef int32_t i
    if S.cap <= EPOCH_MAX_STATES and (S.ht_epoch >> 24) < 255:
        S.ht_epoch += 1u << 24
    else:
        memset(S.ht, 0, 2 * (<size_t> S.ht_mask + 1) * sizeof(uint32_t))
        S.ht_epoch = (1u << 24) if S.cap <= EPOCH_MAX_STATES else 0
    for i in range(BM_W):
        S.bm[i] = 0


cdef inline void sparse_new_state(Sam *S, int32_t v) noexcept nogil:
    cdef int32_t i
    for i in range(BM_W):
        S.bm[<int64_t> v * BM_W + i] = 0


cdef inline bint bm_has(Sam *S, int64_t v, int32_t x) noexcept nogil:
    return (S.bm[v * BM_W + (x >> 6)] >> (x & 63)) & 1


cdef extern from *:
    """
    #include <stdio.h>
    #include <stdlib.h>
    static void rosa_table_overflow(void) {
        fprintf(stderr, "rosa kernel: a sparse transition table has neither the key nor an empty slot; its load "
                        "invariant (at most 3/4 full) broke, so the automaton is no longer valid. Aborting instead "
                        "of probing forever. The dense layout (MODE_DENSE, the default) does not use the table; "
                        "please report this with the bit width and T.\\n");
        fflush(stderr);
        abort();
    }
    """
    void table_overflow "rosa_table_overflow"() noexcept nogil


cdef inline uint32_t *ht_slot(Sam *S, int64_t v, int32_t x) noexcept nogil:
    """The slot of (v, x): the one holding its key, or the empty slot where it would be inserted. The load stays at
    most 3/4 by construction; should that break, a lookup that has probed every slot aborts the process with a
    message: with a lost transition the automaton's chains may cycle, so no scan could be trusted to end."""
    cdef uint32_t key = S.ht_epoch | (<uint32_t> v << 8) | <uint32_t> x
    cdef uint32_t h = (key * <uint32_t> HASH_MUL) >> S.ht_shift
    cdef uint32_t k2, probes
    for probes in range(S.ht_mask + 1):
        k2 = S.ht[2 * h]
        if k2 == key or k2 == 0 or ((k2 ^ key) & S.ht_emask) != 0:
            return &S.ht[2 * h]
        h = (h + 1) & S.ht_mask
    table_overflow()
    return NULL


cdef inline int32_t ht_get(Sam *S, int64_t v, int32_t x) noexcept nogil:
    """Target of the transition (v, x) of a non-root state whose presence bit is set."""
    return <int32_t> ht_slot(S, v, x)[1]


cdef inline void ht_put(Sam *S, int64_t v, int32_t x, int32_t target) noexcept nogil:
    cdef uint32_t *slot = ht_slot(S, v, x)
    slot[0] = S.ht_epoch | (<uint32_t> v << 8) | <uint32_t> x
    slot[1] = <uint32_t> target


# ---------------------------------------------------------------- layout accessors (both layouts)

cdef inline int32_t tr_get(al_t *al, Sam *S, idx_t *nx, int64_t v, int32_t x) noexcept nogil:
    """next[v][x], 0 = none."""
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    if al_t is AlphaSparse:
        if v == 0:
            return nx[x]
        if not bm_has(S, v, x):
            return 0
        return ht_get(S, v, x)
    else:
        return nx[v * A + x]


cdef inline int32_t tr_get_present(al_t *al, Sam *S, idx_t *nx, int64_t v, int32_t x) noexcept nogil:
    """next[v][x] where v is known to have an x-transition."""
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    if al_t is AlphaSparse:
        if v == 0:
            return nx[x]
        return ht_get(S, v, x)
    else:
        return nx[v * A + x]


cdef inline bint tr_exists(al_t *al, Sam *S, idx_t *nx, int64_t v, int32_t x) noexcept nogil:
    """Whether v has an x-transition, read from the row (dense; the extend walk) or the bitmap (sparse)."""
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    if al_t is AlphaSparse:
        return bm_has(S, v, x)
    else:
        return nx[v * A + x] != 0


cdef inline bint has_trans(al_t *al, Sam *S, idx_t *nx, idx_t *I, int64_t A, idx_t y, int32_t x) noexcept nogil:
    """Whether y has an x-transition, read from the record's mask (bits <= 4), the bitmap (sparse) or the row."""
    if al_t is AlphaSparse:
        return bm_has(S, y, x)
    else:
        if A <= MASK_MAX_A:
            return (I[y * INFO_W + F_MASK] >> x) & 1
        return nx[y * A + x] != 0


cdef inline void tr_add(al_t *al, jr_t *jr, Sam *S, idx_t *nx, idx_t *I, int64_t v, int32_t x,
                        idx_t target) noexcept nogil:
    """A new transition v --x--> target (v had none)."""
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    if al_t is AlphaSparse:
        S.bm[v * BM_W + (x >> 6)] |= (<uint64_t> 1) << (x & 63)
        if v == 0:
            nx[x] = target
        else:
            ht_put(S, v, x, target)
    else:
        jput(jr, &nx[v * A + x], target)
        if A <= MASK_MAX_A:
            jput(jr, &I[v * INFO_W + F_MASK], <idx_t> (I[v * INFO_W + F_MASK] | <idx_t> (1 << x)))


cdef inline void tr_redirect(al_t *al, jr_t *jr, Sam *S, idx_t *nx, int64_t v, int32_t x,
                             idx_t target) noexcept nogil:
    """Point v's existing x-transition at target."""
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    if al_t is AlphaSparse:
        if v == 0:
            nx[x] = target
        else:
            ht_slot(S, v, x)[1] = <uint32_t> target
    else:
        jput(jr, &nx[v * A + x], target)


cdef inline void tr_copy(al_t *al, Sam *S, idx_t *nx, idx_t *I, int64_t dst, int64_t src) noexcept nogil:
    """Give the fresh state dst the transitions of the non-root state src (a clone)."""
    cdef int64_t A = 16 if al_t is Alpha16 else S.A
    cdef int32_t i, x
    cdef uint64_t word
    if al_t is AlphaSparse:
        for i in range(BM_W):
            word = S.bm[src * BM_W + i]
            S.bm[dst * BM_W + i] = word
            while word:
                x = (i << 6) + ctz64(word)
                word &= word - 1
                ht_put(S, dst, x, ht_get(S, src, x))
    else:
        memcpy(nx + dst * A, nx + src * A, A * sizeof(idx_t))
        I[dst * INFO_W + F_MASK] = I[src * INFO_W + F_MASK]


cdef int32_t probe_sparse(jr_t *jr, Sam *S, idx_t *nx, int32_t v, int32_t a, int32_t *out) noexcept nogil:
    """probe_flips on the sparse layout: out[j] = dest_time(step(v, a ^ (1 << j))) for every bit j, and
    step(v, a) returned (0 = none), all from one walk of v's chain (or one LCT access). A symbol is looked up
    only where the root has it (then some state on the chain has it) and v's bitmap does not already answer."""
    cdef idx_t *I = <idx_t *> S.info
    cdef idx_t *L
    cdef int32_t bits = S.bits
    cdef int32_t m = bits + 1               # slot ``bits`` is a itself
    cdef int32_t xs[9]
    cdef int32_t ns[9]
    cdef int32_t j, x, pending = 0
    cdef idx_t u, top, best
    for j in range(bits):
        xs[j] = a ^ (1 << j)
    xs[bits] = a
    for j in range(m):
        x = xs[j]
        ns[j] = 0
        if nx[x] != 0:
            if v == 0:
                ns[j] = nx[x]
            elif bm_has(S, v, x):
                ns[j] = ht_get(S, v, x)
            else:
                pending |= 1 << j
    if pending:
        if S.lct:
            # One access of v serves every probe: splaying within v's root-path tree keeps its nodes.
            L = <idx_t *> S.lctn
            lct_access(jr, L, I, <idx_t> v)
            top = <idx_t> v
            for j in range(m):
                if (pending >> j) & 1:
                    best = lct_deepest_with(<AlphaSparse *> NULL, jr, S, L, I, nx, S.A, &top, xs[j])
                    ns[j] = tr_get_present(<AlphaSparse *> NULL, S, nx, best, xs[j])
        else:
            u = <idx_t> v
            while pending:
                u = I[u * INFO_W + F_LINK]
                S.work += 1
                if u == 0:                  # the root has every pending symbol
                    for j in range(m):
                        if (pending >> j) & 1:
                            ns[j] = nx[xs[j]]
                    break
                for j in range(m):
                    if (pending >> j) & 1 and bm_has(S, u, xs[j]):
                        ns[j] = ht_get(S, u, xs[j])
                        pending &= ~(1 << j)
    for j in range(bits):
        out[j] = dest_time(jr, S, nx, ns[j])
    return ns[bits]
