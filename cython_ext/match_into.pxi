# The pipeline's entry points (included by rosa_sam.pyx): one pass over the inputs, results written by the
# kernel's threads straight into caller buffers in the narrow index dtype, arenas kept across calls.
#
# ``count_q_runs``: Q-runs per pair and the largest query symbol (the caller's range check), one read of q.
# ``match_into``: the scan of every pair, q and k read in place ([B, R, T], contiguous per pair); the largest key
#   symbol of each pair is checked before its scan (a pair with an out-of-range symbol is not scanned and the
#   call reports it). tau and cf go to int16 or int32 buffers (``out_t``); either may be skipped (the deferred
#   counterfactual job writes no tau). Pairs are handed to threads dynamically (one at a time), so a slow pair
#   does not hold back a thread's whole static share. Results do not depend on the thread count or the order.
#
# Arenas: one Sam per thread plus int32 scratch for a pair's tau and cf, kept in a module cache between calls
# (the same bits and at most the same T reuse them; a larger request reallocates). A call that finds the cache
# in use (another thread is inside match_into) uses arenas of its own for that call.

from libc.stdint cimport int16_t
import array as array_module

ctypedef fused out_t:
    int16_t
    int32_t


cdef struct Arenas:
    int n
    int bits
    int64_t T            # positions each arena holds
    int mode_flags       # arena_flags: MODE_WIDE, LCT records up front, sparse layout
    Sam *sams
    int32_t *tau_scratch # [n * T]
    int32_t *cf_scratch  # [n * T * bits]


cdef Arenas _cache
_cache.n = 0
_cache.sams = NULL
_cache.tau_scratch = NULL
_cache.cf_scratch = NULL
cdef bint _cache_busy = False


cdef void arenas_free(Arenas *a) noexcept nogil:
    cdef int i
    if a.sams != NULL:
        for i in range(a.n):
            sam_free(&a.sams[i])
    free(a.sams); free(a.tau_scratch); free(a.cf_scratch)
    a.sams = NULL; a.tau_scratch = NULL; a.cf_scratch = NULL
    a.n = 0


cdef int arenas_alloc(Arenas *a, int n, int bits, int64_t T, int mode) noexcept nogil:
    """0, or -1 when out of memory (then ``a`` is left empty)."""
    cdef int i
    cdef int failed = 0
    a.n = n
    a.bits = bits
    a.T = T
    a.mode_flags = arena_flags(bits, T, mode)
    a.sams = <Sam *> calloc(n, sizeof(Sam))
    a.tau_scratch = <int32_t *> malloc(n * T * sizeof(int32_t))
    a.cf_scratch = <int32_t *> malloc(n * T * bits * sizeof(int32_t))
    if a.sams == NULL or a.tau_scratch == NULL or a.cf_scratch == NULL:
        failed = 1
    else:
        for i in range(n):
            if sam_alloc(&a.sams[i], bits, 2 * T + 2, T + 1, mode & MODE_WIDE,
                         (mode & MODE_PATH_MASK) != MODE_NAIVE, want_sparse(bits, 2 * T + 2, mode)) != 0:
                failed = 1
            a.sams[i].group_rows = 1
    if failed:
        arenas_free(a)
        return -1
    return 0


cdef inline int arena_flags(int bits, int64_t T, int mode) noexcept nogil:
    """What an arena was allocated for besides its size: MODE_WIDE, LCT records up front (1) and the sparse
    layout (2)."""
    cdef int flags = mode & MODE_WIDE
    if (mode & MODE_PATH_MASK) != MODE_NAIVE:
        flags |= 1
    if want_sparse(bits, 2 * T + 2, mode):
        flags |= 2
    return flags


cdef bint arenas_fit(Arenas *a, int n, int bits, int64_t T, int mode) noexcept nogil:
    return (a.sams != NULL and a.n >= n and a.bits == bits and a.T >= T
            and a.mode_flags == arena_flags(bits, T, mode))


cdef Arenas *arenas_acquire(Arenas *own, int n, int bits, int64_t T, int mode, bint *cached, str who) except NULL:
    """The cached arenas, fitted to the request (cached[0] = True), or, when another call holds the cache, ``own``
    allocated for this call alone. Raises MemoryError naming ``who``. Every acquire is paired with
    ``arenas_release``. Called with the GIL held, which makes the busy flag's test and set one step."""
    global _cache_busy
    own.sams = NULL
    cached[0] = False
    if not _cache_busy:
        _cache_busy = True
        cached[0] = True
        if not arenas_fit(&_cache, n, bits, T, mode):
            arenas_free(&_cache)
            if arenas_alloc(&_cache, n, bits, T, mode) != 0:
                _cache_busy = False
                raise MemoryError(f"{who}: cannot allocate the per-thread arenas")
        return &_cache
    if arenas_alloc(own, n, bits, T, mode) != 0:
        raise MemoryError(f"{who}: cannot allocate the per-thread arenas")
    return own


cdef void arenas_release(Arenas *own, bint cached):
    """Give back what ``arenas_acquire`` returned: the cache becomes free again, or ``own`` is freed."""
    global _cache_busy
    if cached:
        _cache_busy = False
    else:
        arenas_free(own)


def _test_sparse_table_slots(int64_t slots):
    """Tests only: sparse tables of ``slots`` slots (a power of two; 0 = the size the arena needs) from the next
    arena allocation on; the cached arenas are released."""
    global _table_slots_override
    if not release_arenas():
        raise RuntimeError("_test_sparse_table_slots: a scan is running")
    _table_slots_override = slots


def release_arenas():
    """Free the cached arenas (the next call allocates them again)."""
    global _cache_busy
    if _cache_busy:
        return False
    arenas_free(&_cache)
    return True


def arena_bytes():
    """Bytes held by the cached arenas (0 when none)."""
    if _cache.sams == NULL:
        return 0
    return int(_cache.n * (sam_bytes(&_cache.sams[0]) + _cache.T * (1 + _cache.bits) * 4))


cdef inline int32_t row_runs(const uint8_t *row, int64_t T, uint8_t *top) noexcept nogil:
    """Runs of row[0..T) (T >= 1) and, in top[0], its largest symbol; two branch-free reductions that the compiler
    vectorises (a loop of its own, outside the parallel region's private variables)."""
    cdef int64_t t
    cdef int32_t changes = 0
    cdef uint8_t hi = row[0]
    for t in range(1, T):
        changes += row[t] != row[t - 1]
    for t in range(T):
        hi = row[t] if row[t] > hi else hi
    top[0] = hi
    return changes + 1


def count_q_runs(const uint8_t[:, :, ::1] q, int32_t[:, ::1] num_q_runs, int num_threads):
    """num_q_runs[b, r] = Q-runs of q[b, r, :] ([B, R, T]); returns the largest symbol of q (-1 if empty)."""
    cdef int64_t B = q.shape[0], R = q.shape[1], T = q.shape[2]
    cdef int64_t pair, b, r
    cdef uint8_t[:] his = bytearray(max(1, B * R))
    cdef int32_t best = -1
    if T == 0 or B * R == 0:
        return -1
    with nogil:
        for pair in prange(B * R, num_threads=max(1, num_threads), schedule="static"):
            b = pair // R
            r = pair % R
            num_q_runs[b, r] = row_runs(&q[b, r, 0], T, &his[pair])
    for pair in range(B * R):
        if his[pair] > best:
            best = his[pair]
    return best


cdef inline void copy_out(const int32_t *src, out_t *dst, int64_t n) noexcept nogil:
    cdef int64_t i
    for i in range(n):
        dst[i] = <out_t> src[i]


cdef void match_pairs(const uint8_t[:, :, ::1] q, const uint8_t[:, :, ::1] k, int bits, out_t *tau, out_t *cf,
                      int64_t nq_max, bint want_tau, bint want_cf, Arenas *ar, int nthreads, int mode,
                      int32_t *bad) noexcept nogil:
    """The scan of every pair into tau / cf (narrow). A pair whose largest key symbol is out of range is skipped
    and recorded in bad[2 * tid], bad[2 * tid + 1] = (pair, symbol) of the thread that met it."""
    cdef int64_t B = q.shape[0], R = q.shape[1], T = q.shape[2]
    cdef int64_t pair, b, r, i, nq
    cdef int tid
    cdef int32_t A = 1 << bits
    cdef const uint8_t *krow
    cdef uint8_t khi
    cdef int32_t *ts
    cdef int32_t *cs
    cdef Sam *S
    for pair in prange(B * R, num_threads=nthreads, schedule="dynamic", chunksize=1):
        tid = threadid()
        b = pair // R
        r = pair % R
        krow = &k[b, r, 0]
        khi = 0
        for i in range(T):
            khi = krow[i] if krow[i] > khi else khi
        if khi >= A:
            bad[2 * tid] = <int32_t> pair
            bad[2 * tid + 1] = khi
            continue
        S = &ar.sams[tid]
        ts = ar.tau_scratch + tid * ar.T
        cs = ar.cf_scratch + tid * ar.T * bits
        sam_reset(S, mode, 0)
        scan_any(<NoJournal *> NULL, S, &q[b, r, 0], krow, T, ts, cs if want_cf else NULL)
        if want_tau:
            copy_out(ts, tau + pair * T, T)
        if want_cf:
            nq = S.nq
            copy_out(cs, cf + pair * nq_max * bits, nq * bits)
            for i in range(nq * bits, nq_max * bits):
                cf[pair * nq_max * bits + i] = -1


def match_into(const uint8_t[:, :, ::1] q, const uint8_t[:, :, ::1] k, int bits, out_t[::1] tau, out_t[::1] cf,
               int64_t nq_max, bint want_tau, bint want_cf, int num_threads, int mode):
    """The scan of every pair of q, k ([B, R, T] uint8, contiguous per pair) into ``tau`` (flat, B * R * T) and
    ``cf`` (flat, B * R * nq_max * bits), numpy int16 or int32 arrays of the same dtype (either unused, and then
    of any length >= 1, when its flag is off). Returns None, or (pair, symbol) of a pair whose keys exceed
    2**bits - 1 (nothing was written for that pair)."""
    cdef int64_t B = q.shape[0], R = q.shape[1], T = q.shape[2]
    cdef int nthreads = max(1, num_threads)
    cdef Arenas own
    cdef Arenas *ar
    cdef bint cached = False
    cdef int32_t[::1] bad
    cdef int t
    if k.shape[0] != B or k.shape[1] != R or k.shape[2] != T:
        raise ValueError("match_into: q and k must have the same shape")
    if B * R == 0 or T == 0:
        return None
    if tau.shape[0] < (B * R * T if want_tau else 1) or cf.shape[0] < (B * R * nq_max * bits if want_cf else 1):
        raise ValueError("match_into: output buffers too small")
    if nthreads > B * R:
        nthreads = <int> (B * R)
    bad = array_module.array("i", [-1] * (2 * nthreads))
    ar = arenas_acquire(&own, nthreads, bits, T, mode, &cached, "rosa match_into")
    try:
        with nogil:
            match_pairs(q, k, bits, &tau[0], &cf[0], nq_max, want_tau, want_cf, ar, nthreads, mode, &bad[0])
    finally:
        arenas_release(&own, cached)
    for t in range(nthreads):
        if bad[2 * t] >= 0:
            return (int(bad[2 * t]), int(bad[2 * t + 1]))
    return None
