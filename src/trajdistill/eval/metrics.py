"""Accuracy metrics over n sampled responses per problem: Avg@k and unbiased Pass@k.

For one problem with n samples of which c pass:

    Avg@n  = c / n                                  (mean pass over the samples)
    Pass@k = 1 - C(n - c, k) / C(n, k)              (Chen et al. 2021, unbiased for k <= n)
           = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)   (the product form evaluated here)

Dataset numbers are means over problems, with the standard error of that mean
(sample standard deviation across problems / sqrt(#problems)).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Iterable, Sequence

from trajdistill.records import Verdict


def _check_counts(n: int, c: int, k: int) -> None:
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"pass_at_k: {name} must be an int, got {value!r}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n} (draw at least k samples)")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from the n, passes.

    The product form avoids the huge binomials of `1 - C(n-c, k)/C(n, k)`.
    """
    _check_counts(n, c, k)
    if n - c < k:  # every k-subset contains a passing sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_k(verdicts: Iterable[Verdict | bool]) -> float:
    """Mean pass over one problem's samples (`Verdict`s or plain booleans)."""
    passed = [v.passed if isinstance(v, Verdict) else bool(v) for v in verdicts]
    if not passed:
        raise ValueError("avg_at_k: no verdicts")
    return sum(passed) / len(passed)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(len)); SE is 0 for one value, NaN for none."""
    count = len(values)
    if count == 0:
        return float("nan"), float("nan")
    mean = sum(values) / count
    if count == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    return mean, math.sqrt(variance / count)


# z_{1 - alpha/2} + z_{power} for a two-sided 5 % test at 80 % power: 1.959964 + 0.841621.
MDE_Z = NormalDist().inv_cdf(1 - 0.05 / 2) + NormalDist().inv_cdf(0.8)


def min_detectable_effect(se: float, problems: int) -> float:
    """The smallest paired change (a fraction, like the change itself) that `problems` problems
    detect with 80 % power in a two-sided test at 5 %.

        MDE = (z_{1 - alpha/2} + z_{power}) * SE = (1.959964 + 0.841621) * SE = 2.801585 * SE

    with SE the standard error of the mean of the per-problem differences (`mean_se`).

    SE = 0 means every problem changed by the same amount, in practice that no problem changed
    (both runs 0 % correct, say); the formula above would then claim any change is detectable.
    Instead, with no discordant problem among n, the smallest rate of discordant problems that
    makes seeing none unlikely (the rule of three, 95 %: (1 - p)^n <= 0.05 at p ~ 3/n) is

        MDE = 3 / n                   (300 / n points)

    NaN when SE is NaN (no problems).
    """
    if math.isnan(se):
        return float("nan")
    if se < 1e-12:  # equal differences can leave float rounding noise instead of an exact 0
        return 3.0 / problems
    return MDE_Z * se


def summarize(correct_counts: Sequence[int], n: int, ks: Sequence[int]) -> dict:
    """Dataset-level metrics from per-problem pass counts (each out of n samples).

    Returns `{"problems": P, "n": n, "avg@n": {"mean", "se"}, "pass@k": {"mean", "se"}, ...}`,
    the layout `trajdistill.eval.runner` writes.
    """
    for k in ks:
        _check_counts(n, 0, k)
    for count in correct_counts:
        _check_counts(n, count, 1)
    summary: dict = {"problems": len(correct_counts), "n": n}
    mean, se = mean_se([c / n for c in correct_counts])
    summary[f"avg@{n}"] = {"mean": mean, "se": se}
    for k in ks:
        mean, se = mean_se([pass_at_k(n, c, k) for c in correct_counts])
        summary[f"pass@{k}"] = {"mean": mean, "se": se}
    return summary
