"""ROC AUC of a score against a binary label, with a confidence interval.

    AUC = P(s_pos > s_neg) + 1/2 P(s_pos = s_neg)
        = U / (n_pos n_neg)          U = the Mann-Whitney statistic of the positives

computed from mid-ranks in O(n log n): `U = sum of the positives' ranks - n_pos (n_pos + 1) / 2`.
Used for ReNIO's diagnostic: how well the score `s_i` (never trained on the label) separates the
verifier's incorrect rollouts (positives) from the correct ones.

Intervals:
- `hanley_mcneil` (Hanley & McNeil 1982): normal approximation with
  `SE^2 = (A(1-A) + (n_pos-1)(Q1-A^2) + (n_neg-1)(Q2-A^2)) / (n_pos n_neg)`,
  `Q1 = A/(2-A)`, `Q2 = 2A^2/(1+A)`; the interval is clipped to [0, 1].
- `bootstrap`: percentile interval over resamples drawn within each class (stratified), so every
  resample has both classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np


@dataclass
class AucResult:
    auc: float
    low: float
    high: float
    se: float
    n_pos: int
    n_neg: int
    level: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        pct = round(100 * self.level)
        return (f"AUC {self.auc:.3f} ({pct}% CI {self.low:.3f}-{self.high:.3f}, {self.method}; "
                f"{self.n_pos} positives, {self.n_neg} negatives)")


def _arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, y


def mann_whitney_u(scores: Sequence[float], labels: Sequence[bool]) -> tuple[float, float]:
    """`(U, n_pos * n_neg)`: pairs where the positive scores higher, ties counting 1/2.

    Returned as a (sum, count) pair so several batches' statistics can be added before dividing.
    """
    s, y = _arrays(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.0, 0.0
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # mid-ranks: tied values share the mean of the ranks they occupy
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    u = float(ranks[y].sum() - n_pos * (n_pos + 1) / 2.0)
    return u, float(n_pos * n_neg)


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC of `scores` for the positive class `labels == True`; NaN if a class is empty."""
    u, pairs = mann_whitney_u(scores, labels)
    return u / pairs if pairs else float("nan")


def _hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def auc_with_ci(
    scores: Sequence[float],
    labels: Sequence[bool],
    *,
    level: float = 0.95,
    method: str = "hanley_mcneil",
    resamples: int = 2000,
    seed: int = 0,
) -> AucResult:
    """AUC with a `level` confidence interval (`hanley_mcneil` or `bootstrap`)."""
    s, y = _arrays(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    auc = roc_auc(s, y)
    if not (n_pos and n_neg):
        return AucResult(auc, float("nan"), float("nan"), float("nan"), n_pos, n_neg, level, method)
    if method == "hanley_mcneil":
        se = _hanley_mcneil_se(auc, n_pos, n_neg)
        z = NormalDist().inv_cdf(0.5 + level / 2)
        return AucResult(auc, max(0.0, auc - z * se), min(1.0, auc + z * se), se, n_pos, n_neg, level, method)
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        pos, neg = s[y], s[~y]
        labels_b = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
        stats = np.array([
            roc_auc(np.r_[rng.choice(pos, n_pos), rng.choice(neg, n_neg)], labels_b) for _ in range(resamples)
        ])
        low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
        return AucResult(auc, float(low), float(high), float(stats.std(ddof=1)), n_pos, n_neg, level, method)
    raise ValueError(f"method must be 'hanley_mcneil' or 'bootstrap', got {method!r}")
