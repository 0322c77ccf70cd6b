"""A baseline of the published approach, for side-by-side timing only (not used by the library).

Per pair: a dense int64 suffix automaton over the K-run string allocated per pair, the latest-end
update walking the whole suffix-link chain on every extend, every step and all 2*M probes per
Q-run walking suffix links from the context state, and a [T, M, 2] int64 counterfactual table of
K-run indices. Same semantics as docs/retrieval.md §3 (the benchmark checks tau against rosa_match).
"""
import numpy as np
from numba import njit


@njit(cache=False)
def _step(nxt, link, v, x):
    while v != -1:
        if nxt[v, x] != -1:
            return nxt[v, x]
        v = link[v]
    return -1


@njit(cache=False)
def _scan_pair(q, k, bits, tau, cf):
    T = q.shape[0]
    A = 1 << bits
    cap = 2 * T + 2
    nxt = np.full((cap, A), -1, dtype=np.int64)
    link = np.full(cap, -1, dtype=np.int64)
    length = np.zeros(cap, dtype=np.int64)
    e = np.full(cap, -1, dtype=np.int64)
    starts = np.zeros(T + 1, dtype=np.int64)
    size, last, n_runs = 1, 0, 0
    st, i, adv = 0, -1, False
    for t in range(T):
        if t == 0 or k[t] != k[t - 1]:
            x = k[t]
            pos = n_runs
            starts[n_runs] = t
            n_runs += 1
            cur = size
            size += 1
            length[cur] = length[last] + 1
            v = last
            while v != -1 and nxt[v, x] == -1:
                nxt[v, x] = cur
                v = link[v]
            if v == -1:
                link[cur] = 0
            else:
                w = nxt[v, x]
                if length[v] + 1 == length[w]:
                    link[cur] = w
                else:
                    c = size
                    size += 1
                    nxt[c, :] = nxt[w, :]
                    link[c] = link[w]
                    e[c] = e[w]
                    length[c] = length[v] + 1
                    while v != -1 and nxt[v, x] == w:
                        nxt[v, x] = c
                        v = link[v]
                    link[w] = c
                    link[cur] = c
            last = cur
            v = cur
            while v != -1:
                e[v] = pos
                v = link[v]
        a = q[t]
        if t == 0 or a != q[t - 1]:
            i += 1
            adv = False
            for j in range(bits):
                for beta in range(2):
                    a2 = (a & ~(1 << j)) | (beta << j)
                    ns = _step(nxt, link, st, a2)
                    if ns != -1 and e[ns] + 1 <= n_runs - 1:
                        cf[i, j, beta] = e[ns] + 1
                    else:
                        cf[i, j, beta] = -1
        ns = _step(nxt, link, st, a)
        if ns == -1:
            tau[t] = -1
        else:
            n = e[ns] + 1
            tau[t] = starts[n] if n <= n_runs - 1 else -1
            if not adv:
                st = ns
                adv = True


@njit(cache=False)
def baseline_match(q, k, bits):
    """q, k: int64 [P, T] (one row per pair). Returns tau int64 [P, T], cf int64 [P, T, bits, 2]."""
    P, T = q.shape
    tau = np.empty((P, T), dtype=np.int64)
    cf = np.full((P, T, bits, 2), -1, dtype=np.int64)
    for p in range(P):
        _scan_pair(q[p], k[p], bits, tau[p], cf[p])
    return tau, cf
