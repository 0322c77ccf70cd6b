# The naive scan at bits = 4 with uint16 ids (included by rosa_sam.pyx): the same automaton, the same results and
# the same chain-work accounting as ``scan_pair`` on its naive path, written as one loop for the common training
# case, where a pair is naive, narrow and unjournaled.
#
# What makes it cheaper than the generic code (which serves every path, width and journal):
#   * a state's record (link, len, e + 1, presence mask: four uint16 fields, 8 bytes) is read and written as one
#     64-bit word, so a chain step is one load and, where it writes, one store;
#   * "has v an x-transition" is read from the record's mask that the same load brought, not from the row;
#   * the pair's scan state (last, sizes, context, counters) lives in locals for the whole call;
#   * no LCT, sparse-layout or journal tests inside the loop.
#
# ``scan_naive16`` stops early when the hybrid path's chain-work budget is exceeded: the caller switches the pair to
# the link-cut tree and continues with ``scan_pair``, which picks up the state written back here.

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define ROSA_PACKED_RECORDS 1
    #else
    #define ROSA_PACKED_RECORDS 0
    #endif
    """
    # 1 where a record's four uint16 fields read as one little-endian 64-bit word (F_LINK in the low bits).
    bint PACKED_RECORDS "ROSA_PACKED_RECORDS"


cdef enum:
    R_LEN_SHIFT = 16
    R_N_SHIFT = 32
    R_MASK_SHIFT = 48


cdef inline uint64_t rec_load(const uint16_t *I, int64_t v) noexcept nogil:
    cdef uint64_t r
    memcpy(&r, I + INFO_W * v, 8)
    return r


cdef inline void rec_store(uint16_t *I, int64_t v, uint64_t r) noexcept nogil:
    memcpy(I + INFO_W * v, &r, 8)


cdef inline int64_t rec_link(uint64_t r) noexcept nogil:
    return <int64_t> (r & 0xFFFF)


cdef inline int64_t rec_len(uint64_t r) noexcept nogil:
    return <int64_t> ((r >> R_LEN_SHIFT) & 0xFFFF)


cdef inline int64_t rec_n(uint64_t r) noexcept nogil:
    return <int64_t> ((r >> R_N_SHIFT) & 0xFFFF)


cdef inline uint32_t rec_mask(uint64_t r) noexcept nogil:
    return <uint32_t> (r >> R_MASK_SHIFT)


cdef inline bint naive16_applies(Sam *S) noexcept nogil:
    return PACKED_RECORDS and S.A == 16 and not S.wide and not S.lct and S.sparse == 0


cdef inline int64_t step16(const uint16_t *I, const uint16_t *nx, int64_t st, int32_t a, int64_t *work) noexcept nogil:
    """``step`` on the naive path: the a-successor of the deepest suffix-link ancestor of st having one; 0 = none."""
    cdef int64_t ns, u
    if nx[a] == 0:
        return 0
    ns = nx[st * 16 + a]
    if ns == 0:
        u = rec_link(rec_load(I, st))
        while not (rec_mask(rec_load(I, u)) >> a) & 1:
            u = rec_link(rec_load(I, u))
            work[0] += 1
        ns = nx[u * 16 + a]
    return ns


cdef inline int32_t dest16(const uint16_t *I, const int32_t *run_start, int64_t nruns, int64_t ns) noexcept nogil:
    """``dest_time``: the start of the run after the latest end of state ns, or -1."""
    cdef int64_t nn
    if ns == 0:
        return -1
    nn = rec_n(rec_load(I, ns))
    return run_start[nn] if nn < nruns else -1


cdef int64_t scan_naive16(Sam *S, const uint8_t *q, const uint8_t *k, int64_t n, int32_t *tau,
                          int32_t *cf) noexcept nogil:
    """``scan_pair`` on the naive path for a narrow bits-4 pair (``naive16_applies``) whose padding is consumed
    (S.length >= S.skip). Returns the positions consumed: n, or fewer when the hybrid budget ran out (then the
    pair is switched to the link-cut tree here and the caller continues with ``scan_pair``)."""
    cdef uint16_t *I = <uint16_t *> S.info
    cdef uint16_t *nx = <uint16_t *> S.nxt
    cdef int32_t *run_start = S.run_start
    cdef int64_t nst = S.n_states, last = S.last, nruns = S.n_runs, st = S.st
    cdef int32_t adv = S.adv, lastq = S.lastq, lastk = S.lastk
    cdef int64_t nq = S.nq, length = S.length, work = S.work
    cdef bint hybrid = S.mode == MODE_HYBRID
    cdef int64_t i, cur, v, w, clone, u, ns, nn, steps, link_cur, e1, clen
    cdef int32_t x, a, j, y
    cdef uint64_t r, rw
    cdef uint32_t flips, hit, pend, rootmask
    cdef uint32_t flipset[16]
    cdef int64_t nsx[16]
    cdef int32_t *out
    cdef int64_t done = n
    for a in range(16):
        flipset[a] = (1u << (a ^ 1)) | (1u << (a ^ 2)) | (1u << (a ^ 4)) | (1u << (a ^ 8)) | (1u << a)
    for i in range(n):
        x = k[i]
        if x != lastk:
            # A new K-run at index nruns: extend by x (``extend``), then e = pos + 1 along the new chain.
            lastk = x
            run_start[nruns] = <int32_t> length
            e1 = nruns + 1
            nruns += 1
            cur = nst
            nst += 1
            memset(nx + cur * 16, 0, 16 * sizeof(uint16_t))
            r = rec_load(I, last)
            clen = rec_len(r) + 1
            v = last
            while True:
                if (rec_mask(r) >> x) & 1:
                    break
                nx[v * 16 + x] = <uint16_t> cur
                rec_store(I, v, r | (<uint64_t> 1 << (R_MASK_SHIFT + x)))
                v = rec_link(r)
                if v == 0xFFFF:
                    break
                r = rec_load(I, v)
            if v == 0xFFFF:
                link_cur = 0
            else:
                w = nx[v * 16 + x]
                rw = rec_load(I, w)
                if rec_len(r) + 1 == rec_len(rw):
                    link_cur = w
                else:
                    # Clone w: len(v) + 1, w's link, e and transitions; redirect v's chain from w to the clone.
                    clone = nst
                    nst += 1
                    memcpy(nx + clone * 16, nx + w * 16, 16 * sizeof(uint16_t))
                    rec_store(I, clone, (rw & ~(<uint64_t> 0xFFFF << R_LEN_SHIFT))
                              | (<uint64_t> (rec_len(r) + 1) << R_LEN_SHIFT))
                    while True:
                        nx[v * 16 + x] = <uint16_t> clone
                        v = rec_link(rec_load(I, v))
                        if v == 0xFFFF or nx[v * 16 + x] != w:
                            break
                    rec_store(I, w, (rw & ~(<uint64_t> 0xFFFF)) | <uint64_t> clone)
                    link_cur = clone
            # cur: link, len(last) + 1, e + 1 = pos + 1, no transitions; then the rest of its chain below the root.
            rec_store(I, cur, <uint64_t> link_cur | (<uint64_t> clen << R_LEN_SHIFT)
                      | (<uint64_t> e1 << R_N_SHIFT))
            last = cur
            v = link_cur
            steps = 1
            while v != 0:
                I[INFO_W * v + F_N] = <uint16_t> e1
                v = I[INFO_W * v + F_LINK]
                steps += 1
            work += steps
        a = q[i]
        if a != lastq:
            lastq = a
            adv = 0
            if cf != NULL:
                # ``probe_flips`` on presence masks: one walk of the context's chain resolves step(st, a) and the
                # four flipped symbols; a symbol is found somewhere on the chain iff the root has it.
                rootmask = rec_mask(rec_load(I, 0))
                flips = flipset[a]
                u = st
                hit = flips & rec_mask(rec_load(I, u))
                pend = flips & ~hit & rootmask
                while True:
                    while hit:
                        y = ctz(hit)
                        hit &= hit - 1
                        nsx[y] = nx[u * 16 + y]
                    if not pend:
                        break
                    u = rec_link(rec_load(I, u))
                    work += 1
                    hit = rec_mask(rec_load(I, u)) & pend
                    pend &= ~hit
                flips &= rootmask
                out = cf + nq * 4
                for j in range(4):
                    y = a ^ (1 << j)
                    if (flips >> y) & 1:
                        nn = rec_n(rec_load(I, nsx[y]))
                        out[j] = run_start[nn] if nn < nruns else -1
                    else:
                        out[j] = -1
                ns = nsx[a] if (flips >> a) & 1 else 0
            else:
                ns = step16(I, nx, st, a, &work)
            nq += 1
            tau[i] = dest16(I, run_start, nruns, ns)
            if ns != 0:
                st = ns
                adv = 1
        elif adv:
            # The context ends in a and runs never repeat a symbol: the walk ends at the root.
            tau[i] = dest16(I, run_start, nruns, nx[a])
        else:
            ns = step16(I, nx, st, a, &work)
            tau[i] = dest16(I, run_start, nruns, ns)
            if ns != 0:
                st = ns
                adv = 1
        length += 1
        if hybrid and unlikely(work > WORK_SLACK + WORK_PER_POS * length):
            done = i + 1
            break
    S.n_states = <int32_t> nst
    S.last = <int32_t> last
    S.n_runs = <int32_t> nruns
    S.st = <int32_t> st
    S.adv = adv
    S.lastq = lastq
    S.lastk = lastk
    S.nq = <int32_t> nq
    S.length = length
    S.work = work
    if done < n:
        lct_enable(<NoJournal *> NULL, S, nx)
    return done
