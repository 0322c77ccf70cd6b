"""Agreement statistics of the finite-difference probes (``rosa_lightning.modeling.finite_diff``).

``gradient_check`` and the studies' own probe loops give, per stream, the exact loss difference ``fd`` of each
probed bit, the counterfactual estimate ``est`` and optionally the first-order effect of the flip; this module
scores how well they agree: Pearson over the probes where either value is non-zero, with a percentile bootstrap
interval (a few large probes often dominate), Spearman, sign agreement, coverage, and the two first-order
decompositions (docs/gradients.md §5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np


@dataclass
class StreamAgreement:
    """Probes of one stream: ``fd`` and ``est`` float64 [n], probe coordinates int64 [n, 3] as (b, t, c)."""

    stream: str
    fd: np.ndarray
    est: np.ndarray
    where: Optional[np.ndarray] = None
    first_order: Optional[np.ndarray] = None  # float64 [n]: dL/dinj . (inj_forced - inj)

    @classmethod
    def of(cls, probes) -> "StreamAgreement":
        """From a ``finite_diff.StreamProbes`` (or anything with the same fields)."""
        return cls(probes.stream, probes.fd, probes.est, probes.where, probes.first_order)

    @property
    def informative(self) -> np.ndarray:
        """bool [n]: probes where the estimate or the loss difference is non-zero."""
        return (self.fd != 0) | (self.est != 0)

    @property
    def pearson(self) -> float:
        """Pearson correlation of est and fd over the informative probes (NaN with fewer than 3 or no variance)."""
        return pearson(self.fd, self.est)

    @property
    def spearman(self) -> float:
        """Rank correlation of est and fd over the informative probes (robust to a few dominant probes)."""
        m = self.informative
        return pearson(ranks(self.fd[m]), ranks(self.est[m])) if m.sum() >= 3 else float("nan")

    def pearson_ci(self, level: float = 0.9, num_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of ``pearson`` (probes resampled with replacement)."""
        m = np.flatnonzero(self.informative)
        if len(m) < 3:
            return float("nan"), float("nan")
        rng = np.random.default_rng(seed)
        boots = [pearson(self.fd[i], self.est[i]) for i in m[rng.integers(0, len(m), size=(num_boot, len(m)))]]
        boots = np.array([b for b in boots if b == b])
        if len(boots) == 0:
            return float("nan"), float("nan")
        lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    @property
    def ceiling(self) -> float:
        """Pearson(fd, first_order): how far the loss is from linear in the injection (NaN without first_order)."""
        return float("nan") if self.first_order is None else pearson(self.fd, self.first_order)

    @property
    def est_vs_first_order(self) -> float:
        """Pearson(est, first_order): the counterfactual's own error, the loss's non-linearity removed."""
        return float("nan") if self.first_order is None else pearson(self.first_order, self.est)

    @property
    def sign_agreement(self) -> float:
        """Fraction of probes with both values non-zero where sign(est) == sign(fd)."""
        m = (self.fd != 0) & (self.est != 0)
        return float(np.mean(np.sign(self.fd[m]) == np.sign(self.est[m]))) if m.any() else float("nan")

    @property
    def coverage(self) -> float:
        """Fraction of probes that change the loss (fd != 0) for which the estimate is non-zero."""
        m = self.fd != 0
        return float(np.mean(self.est[m] != 0)) if m.any() else float("nan")

    def summary(self) -> Dict[str, float]:
        lo, hi = self.pearson_ci()
        out = {"n": int(len(self.fd)), "informative": int(self.informative.sum()), "pearson": self.pearson,
               "pearson_lo": lo, "pearson_hi": hi, "spearman": self.spearman,
               "sign_agreement": self.sign_agreement, "coverage": self.coverage}
        if self.first_order is not None:
            out.update(ceiling=self.ceiling, est_vs_first_order=self.est_vs_first_order)
        return out


def check_summary(check) -> Dict[str, Dict[str, float]]:
    """``StreamAgreement.summary`` of every stream of a ``finite_diff.GradientCheck``."""
    return {name: StreamAgreement.of(s).summary() for name, s in check.streams.items()}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over entries where a or b is non-zero (NaN with fewer than 3 or no variance)."""
    m = (a != 0) | (b != 0)
    if m.sum() < 3 or np.std(a[m]) == 0 or np.std(b[m]) == 0:
        return float("nan")
    return float(np.corrcoef(a[m], b[m])[0, 1])


def ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 1-based, as float64."""
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(1, len(a) + 1)
    _, inv = np.unique(a, return_inverse=True)
    return np.bincount(inv, weights=r)[inv] / np.bincount(inv)[inv]


def paired_bootstrap_means(scores: np.ndarray, num_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """float64 [num_boot, arms]: the mean of each row of ``scores`` ([arms, n], one column per sample, every arm
    scored on the same samples) over ``num_boot`` resamples of the columns, the same columns for every arm, so
    that differences and ratios between arms keep their pairing."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be [arms, samples] with at least one sample, got shape {scores.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, scores.shape[1], size=(num_boot, scores.shape[1]))
    return np.stack([scores[a][idx].mean(axis=1) for a in range(scores.shape[0])], axis=1)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite ``values`` (NaN, NaN when none is finite)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
