# The naive scan at bits = 8 with uint16 ids in the batch kernel (included by rosa_sam.pyx, after naive16.pxi, whose
# packed-record helpers it uses): the same automaton, results and chain-work accounting as ``scan_pair`` on its
# naive path, written as one loop, with rows that are zeroed group by group instead of whole.
#
# A dense row at bits = 8 is 256 ids (512 bytes), but a state has about two transitions. Here a row is cut into 16
# groups of 16 symbols (32 bytes each) and the record's otherwise unused F_MASK field holds one bit per group: set
# iff the state has a transition in that group. Only the groups whose bit is set are valid; the others hold whatever
# an earlier pair left in the arena. So
#   * a new state writes its 8-byte record and no row (the dense layout zeroes 512 bytes);
#   * the first transition of a group zeroes those 32 bytes, on the line the transition's store touches anyway;
#   * a clone copies the groups its original has (about two) instead of 512 bytes;
#   * "has v an x-transition" is first answered from the group bit of the record the chain walk loads anyway, and
#     the row is read only where the group has a transition (the dense layout reads a row line for every test).
# The new state's row is prefetched for writing, line by line, when the state is made. Measured on the project's
# machine: without that the loop took about 1.8x the dense rows' CPU time, although it ran a third fewer
# instructions and had fewer simulated cache misses (presumably because the dense rows' 512-byte memset is a
# sequential store stream that keeps the lines of the newest rows, which the next extends write, arriving in time);
# with it, it takes about 0.7x (experiments/retrieval_throughput/README.md).
# The root's row stays whole (``sam_reset`` zeroes it, and a group is only zeroed where it has no transition), so
# root lookups need no group test.
#
# The rows are valid for the generic code only after ``zero_free_groups``, which the loop runs before it hands a
# pair to the link-cut tree. The loop therefore runs only on batch arenas (``Sam.group_rows``): a stream's pairs
# are also scanned by the journaled generic loop, which reads rows whole.

cdef extern from *:
    """
    #if defined(__GNUC__)
    #define ROSA_PREFETCHW(p) __builtin_prefetch((p), 1, 3)
    #else
    #define ROSA_PREFETCHW(p) ((void)(p))
    #endif
    """
    # A hint that the cache line at p is about to be written; no effect on results.
    void prefetchw "ROSA_PREFETCHW"(const void *p) noexcept nogil


cdef enum:
    G_SHIFT = 4                    # 16 symbols per group
    G_W = 16


cdef inline bint naive256_applies(Sam *S) noexcept nogil:
    return PACKED_RECORDS and S.A == 256 and not S.wide and not S.lct and S.sparse == 0 and S.group_rows


cdef inline int64_t tr256(const uint16_t *nx, uint64_t r, int64_t v, int32_t x) noexcept nogil:
    """next[v][x] (0 = none) of a state whose record is r."""
    if (rec_mask(r) >> (x >> G_SHIFT)) & 1:
        return nx[v * 256 + x]
    return 0


cdef void zero_free_groups(Sam *S) noexcept nogil:
    """Zero every group without a transition, in every state but the root: the rows become dense rows."""
    cdef uint16_t *I = <uint16_t *> S.info
    cdef uint16_t *nx = <uint16_t *> S.nxt
    cdef int64_t v
    cdef int32_t g
    cdef uint32_t m
    for v in range(1, S.n_states):
        m = I[INFO_W * v + F_MASK]
        for g in range(16):
            if not (m >> g) & 1:
                memset(nx + v * 256 + g * G_W, 0, G_W * sizeof(uint16_t))
        I[INFO_W * v + F_MASK] = 0          # the generic code keeps no group bits at bits > 4


cdef inline int64_t step256(const uint16_t *I, const uint16_t *nx, int64_t st, int32_t a,
                            int64_t *work) noexcept nogil:
    """``step`` on the naive path: the a-successor of the deepest suffix-link ancestor of st having one; 0 = none."""
    cdef int64_t ns, u
    cdef uint64_t r
    if nx[a] == 0:
        return 0
    r = rec_load(I, st)
    ns = tr256(nx, r, st, a)
    if ns == 0:
        u = rec_link(r)
        r = rec_load(I, u)
        ns = tr256(nx, r, u, a)
        while ns == 0:
            u = rec_link(r)
            r = rec_load(I, u)
            ns = tr256(nx, r, u, a)
            work[0] += 1
    return ns


cdef int64_t scan_naive256(Sam *S, const uint8_t *q, const uint8_t *k, int64_t n, int32_t *tau,
                           int32_t *cf) noexcept nogil:
    """``scan_pair`` on the naive path for a narrow bits-8 batch pair (``naive256_applies``) whose padding is
    consumed. Returns the positions consumed: n, or fewer when the hybrid budget ran out (then the rows are made
    dense, the pair is switched to the link-cut tree here and the caller continues with ``scan_pair``)."""
    cdef uint16_t *I = <uint16_t *> S.info
    cdef uint16_t *nx = <uint16_t *> S.nxt
    cdef int32_t *run_start = S.run_start
    cdef int64_t nst = S.n_states, last = S.last, nruns = S.n_runs, st = S.st
    cdef int32_t adv = S.adv, lastq = S.lastq, lastk = S.lastk
    cdef int64_t nq = S.nq, length = S.length, work = S.work
    cdef bint hybrid = S.mode == MODE_HYBRID
    cdef int64_t i, cur, v, w, clone, u, ns, steps, link_cur, e1, clen, t, d, dflip, da
    cdef int32_t x, a, j, g
    cdef uint64_t r, rw
    cdef uint32_t m, pend, hit
    cdef int32_t xs[9]
    cdef int64_t nsx[9]
    cdef uint32_t atroot
    # sdest[y]: dest_time of the state of the one-symbol string y (the root's y-transition), -1 where y never
    # occurred. That state is on every new chain of an extend by y, so its e is y's latest K-run, and its
    # dest_time is the start of the run after that one: set when the next run starts, -1 while y's run is the last.
    # Kept with counterfactuals only (their probes end at the root for most flipped symbols).
    cdef int32_t sdest[256]
    cdef int32_t *out
    cdef int64_t done = n
    cdef int32_t rootn = 0             # the root's transitions: the distinct K symbols so far
    for j in range(256):
        sdest[j] = dest16(I, run_start, nruns, nx[j])
        rootn += nx[j] != 0
    for i in range(n):
        x = k[i]
        if x != lastk:
            # A new K-run at index nruns: extend by x (``extend``), then e = pos + 1 along the new chain.
            if cf != NULL:
                if lastk >= 0:
                    sdest[lastk] = <int32_t> length
                sdest[x] = -1
            lastk = x
            rootn += nx[x] == 0
            run_start[nruns] = <int32_t> length
            e1 = nruns + 1
            nruns += 1
            cur = nst
            nst += 1
            # cur's row is written soon (the next extend adds a transition to it): see the header.
            for j in range(0, 256, 32):
                prefetchw(nx + cur * 256 + j)
            g = x >> G_SHIFT
            r = rec_load(I, last)
            clen = rec_len(r) + 1
            v = last
            t = 0
            while True:
                if (rec_mask(r) >> g) & 1:
                    t = nx[v * 256 + x]
                    if t != 0:
                        break
                else:
                    memset(nx + v * 256 + g * G_W, 0, G_W * sizeof(uint16_t))
                    rec_store(I, v, r | (<uint64_t> 1 << (R_MASK_SHIFT + g)))
                nx[v * 256 + x] = <uint16_t> cur
                v = rec_link(r)
                if v == 0xFFFF:
                    break
                r = rec_load(I, v)
            if v == 0xFFFF:
                link_cur = 0
            else:
                w = t
                rw = rec_load(I, w)
                if rec_len(r) + 1 == rec_len(rw):
                    link_cur = w
                else:
                    # Clone w: len(v) + 1, w's link, e, group bits and the groups they mark; redirect v's chain
                    # from w to the clone (every ancestor of v has an x-transition, so its group is valid).
                    clone = nst
                    nst += 1
                    m = rec_mask(rw)
                    while m:
                        j = ctz(m)
                        m &= m - 1
                        memcpy(nx + clone * 256 + j * G_W, nx + w * 256 + j * G_W, G_W * sizeof(uint16_t))
                    rec_store(I, clone, (rw & ~(<uint64_t> 0xFFFF << R_LEN_SHIFT))
                              | (<uint64_t> (rec_len(r) + 1) << R_LEN_SHIFT))
                    while True:
                        nx[v * 256 + x] = <uint16_t> clone
                        v = rec_link(rec_load(I, v))
                        if v == 0xFFFF or nx[v * 256 + x] != w:
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
                # ``probe_flips`` and ``step`` in one walk of the context's chain: xs[0..8) are the flipped
                # symbols, xs[8] is a. A symbol is looked up only where the root has it (then some state on the
                # chain has it). The chain work is counted as the two separate walks count it: the probe's walk
                # goes as deep as its deepest flipped symbol, the step's one link less deep than a's.
                for j in range(8):
                    xs[j] = a ^ (1 << j)
                    nsx[j] = 0
                xs[8] = a
                nsx[8] = 0
                if rootn == 256:
                    pend = 0x1FF
                else:
                    pend = 0
                    for j in range(9):
                        pend |= (<uint32_t> (nx[xs[j]] != 0)) << j
                g = a >> G_SHIFT
                u = st
                d = 0
                dflip = 0
                da = 0
                atroot = 0
                while pend:
                    if u == 0:
                        atroot = pend           # the root has every pending symbol: their sdest
                        break
                    r = rec_load(I, u)
                    m = rec_mask(r)
                    # The pending symbols whose group u has: a and a ^ 1..8 lie in a's group g, a ^ 16..128 in
                    # groups g ^ 1..8; only those rows are read.
                    hit = pend & ((((m >> g) & 1) * 0x10F) | (((m >> (g ^ 1)) & 1) << 4)
                                  | (((m >> (g ^ 2)) & 1) << 5) | (((m >> (g ^ 4)) & 1) << 6)
                                  | (((m >> (g ^ 8)) & 1) << 7))
                    while hit:
                        j = ctz(hit)
                        hit &= hit - 1
                        t = nx[u * 256 + xs[j]]
                        if t != 0:
                            nsx[j] = t
                            pend &= ~(1u << j)
                    if not pend:
                        break
                    u = rec_link(r)
                    d += 1
                    if pend & 0xFF:
                        dflip = d
                    if pend >> 8:
                        da = d
                work += dflip + (da - 1 if da > 1 else 0)
                out = cf + nq * 8
                for j in range(8):
                    if (atroot >> j) & 1:
                        out[j] = sdest[xs[j]]
                    else:
                        out[j] = dest16(I, run_start, nruns, nsx[j])
                if (atroot >> 8) & 1:
                    ns = nx[a]
                    tau[i] = sdest[a]
                else:
                    ns = nsx[8]
                    tau[i] = dest16(I, run_start, nruns, ns)
            else:
                ns = step256(I, nx, st, a, &work)
                tau[i] = dest16(I, run_start, nruns, ns)
            nq += 1
            if ns != 0:
                st = ns
                adv = 1
        elif adv:
            # The context ends in a and runs never repeat a symbol: the walk ends at the root.
            tau[i] = sdest[a] if cf != NULL else dest16(I, run_start, nruns, nx[a])
        else:
            ns = step256(I, nx, st, a, &work)
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
        zero_free_groups(S)
        lct_enable(<NoJournal *> NULL, S, nx)
    return done
