"""Slow float64 transcription of docs/method.md §2.5 and docs/gradients.md §2, the test oracle of ``counterfactual.py``.

Written per pair and per position straight from the formulas, with the full per-position
counterfactual table ``cf_tau`` [B, R, T, M, 2] (omega_{j,beta}(t) as times, -1 where mu = 0;
docs/retrieval.md §8.2). Only for tiny shapes.
"""
from __future__ import annotations

import numpy as np


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_branch(zq, zk, zv, tau, cf_tau, grad_y, e0, e1, bits: int, field: str = "soft",
                     k_credit: str = "reference", e0_term: bool = False):
    """y and all gradients of the branch in float64.

    Args:
        zq, zk, zv, grad_y: array-likes [B, T, C].
        tau: [B, R, T] destination times (-1 = none).
        cf_tau: [B, R, T, M, 2] counterfactual destination times per position, bit and beta.
        e0, e1: [C].
    Returns:
        dict of float64 arrays: y, grad_q, grad_k, grad_v ([B, T, C]), grad_e0, grad_e1 ([C]).
    """
    zq, zk, zv, g = (np.asarray(a, dtype=np.float64) for a in (zq, zk, zv, grad_y))
    e0, e1 = np.asarray(e0, dtype=np.float64), np.asarray(e1, dtype=np.float64)
    tau, cf_tau = np.asarray(tau), np.asarray(cf_tau)
    B, T, C = zq.shape
    M = bits
    R = C // M
    delta = e1 - e0
    fv = _sig(zv) if field == "soft" else (zv > 0).astype(np.float64)
    out = {k: np.zeros((B, T, C)) for k in ("y", "grad_q", "grad_k", "grad_v")}
    ge0, ge1 = np.zeros(C), np.zeros(C)
    for b in range(B):
        for r in range(R):
            ch = [r * M + m for m in range(M)]
            for t in range(T):
                d = tau[b, r, t]
                theta = [g[b, t, c] * delta[c] for c in ch]
                if d >= 0:
                    for m, c in enumerate(ch):
                        vbit = 1.0 if zv[b, d, c] > 0 else 0.0
                        out["y"][b, t, c] = e0[c] + delta[c] * vbit
                        ge0[c] += (1.0 - vbit) * g[b, t, c]
                        ge1[c] += vbit * g[b, t, c]
                        s = _sig(zv[b, d, c])
                        out["grad_v"][b, d, c] += s * (1 - s) * theta[m]
                for j in range(M):
                    dpart = {}
                    for beta in (0, 1):
                        w = cf_tau[b, r, t, j, beta]
                        dpart[beta] = 0.0 if w < 0 else sum(theta[m] * fv[b, w, ch[m]] for m in range(M))
                        if e0_term and w >= 0:
                            dpart[beta] += sum(g[b, t, c] * e0[c] for c in ch)
                        if w >= 0:
                            kt = w if k_credit == "reference" else _run_start(zk[b][:, ch], w - 1)
                            s = _sig(zk[b, kt, ch[j]])
                            sign = 1.0 if beta == 1 else -1.0
                            out["grad_k"][b, kt, ch[j]] += s * (1 - s) * sign * dpart[beta]
                    s = _sig(zq[b, t, ch[j]])
                    out["grad_q"][b, t, ch[j]] = s * (1 - s) * (dpart[1] - dpart[0])
    out["grad_e0"], out["grad_e1"] = ge0, ge1
    return out


def _run_start(zk_route, t: int) -> int:
    """First time of the K-run containing t, from the route's logits zk_route [T, M] (signs give symbols)."""
    sym = [tuple(row > 0) for row in zk_route]
    while t > 0 and sym[t - 1] == sym[t]:
        t -= 1
    return t


def cf_tau_from_runs(q_sym, k_sym, tau, r_cf_run):
    """Per-position table [R, T, M, 2] from K-run-index counterfactuals (docs/retrieval.md §8.2), one batch row.

    Args:
        q_sym, k_sym, tau: [R, T]; r_cf_run: [R][n_q_runs][M][2] K-run indices or -1.
    """
    q_sym, k_sym = np.asarray(q_sym), np.asarray(k_sym)
    R, T = q_sym.shape
    M = len(r_cf_run[0][0])
    out = np.full((R, T, M, 2), -1, dtype=np.int64)
    for r in range(R):
        starts = [t for t in range(T) if t == 0 or k_sym[r, t] != k_sym[r, t - 1]]
        i = -1
        for t in range(T):
            if t == 0 or q_sym[r, t] != q_sym[r, t - 1]:
                i += 1
            for j in range(M):
                for beta in (0, 1):
                    n = r_cf_run[r][i][j][beta]
                    out[r, t, j, beta] = starts[n] if n >= 0 else -1
    return out
