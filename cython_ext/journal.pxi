# Undo journal of the streaming automata (rosa_sam.pyx StreamState, rosa_tokens.pyx TokenRows), shared by both.
#
# A journaled scan records, before every write to an automaton array, the address and the old value; a
# rollback writes the old values back in reverse order, down to the entry count saved at a position mark,
# and restores the scalar state saved there. Writes into memory that did not exist at the mark (a new
# state's fresh record, a new edge) need no entry: the restored counts drop it. Addresses are raw pointers,
# so a journaled scan must not reallocate an array it writes: the callers reserve capacity first.
#
# The code that writes is compiled twice through the fused type ``jr_t``: with ``NoJournal`` (a plain
# store, the batch kernels and unjournaled scans) and with ``Journal`` (store plus entry). The includer
# defines ``idx_t`` (the element type of the logged arrays) before including this file.

cdef struct JEntry:
    void *addr
    int32_t old
    int32_t width        # bytes of the element: 2 (uint16) or 4 (int32)


cdef struct Journal:
    JEntry *e
    int64_t n
    int64_t cap
    int32_t oom          # 1 once an entry could not be stored: this journal cannot roll back


cdef struct NoJournal:
    int32_t unused


ctypedef fused jr_t:
    NoJournal
    Journal


cdef inline void journal_add(Journal *jr, void *addr, int32_t old, int32_t width) noexcept nogil:
    cdef int64_t c
    cdef JEntry *p
    if jr.n == jr.cap:
        c = jr.cap * 2 if jr.cap > 0 else 256
        p = <JEntry *> realloc(jr.e, c * sizeof(JEntry))
        if p == NULL:
            jr.oom = 1
            return
        jr.e = p
        jr.cap = c
    jr.e[jr.n].addr = addr
    jr.e[jr.n].old = old
    jr.e[jr.n].width = width
    jr.n += 1


cdef inline void jput(jr_t *jr, idx_t *p, idx_t v) noexcept nogil:
    """p[0] = v, journaled when jr_t is Journal."""
    if jr_t is Journal:
        journal_add(jr, <void *> p, <int32_t> p[0], <int32_t> sizeof(idx_t))
    p[0] = v


cdef inline void journal_undo(Journal *jr, int64_t down_to) noexcept nogil:
    """Write back the old values of entries [down_to, n), newest first; n becomes down_to."""
    cdef int64_t i = jr.n - 1
    while i >= down_to:
        if jr.e[i].width == 2:
            (<uint16_t *> jr.e[i].addr)[0] = <uint16_t> jr.e[i].old
        else:
            (<int32_t *> jr.e[i].addr)[0] = jr.e[i].old
        i -= 1
    jr.n = down_to


cdef inline void journal_free(Journal *jr) noexcept nogil:
    free(jr.e)
    jr.e = NULL
    jr.n = 0
    jr.cap = 0
    jr.oom = 0


cdef int rollback_wanted(Journal *journals, int64_t n, int64_t k, int64_t positions, str owner) except -1:
    """The checks a rollback of ``k`` of the ``positions`` journaled positions of ``n`` journals makes first:
    ValueError when they were not all journaled, MemoryError when a journal overflowed (``owner`` names the state
    in that message). Returns 0 when there is nothing to undo (k == 0), else 1."""
    cdef int64_t i
    if k < 0 or k > positions:
        raise ValueError(f"cannot roll back {k} positions: only the last {positions} scanned "
                         f"positions are journaled (scan(..., journal=True) before rollback)")
    if k == 0:
        return 0
    for i in range(n):
        if journals[i].oom:
            raise MemoryError(f"{owner}: a journal could not grow during the scan")
    return 1

