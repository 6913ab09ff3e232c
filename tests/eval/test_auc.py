"""ROC AUC (Mann-Whitney) against a brute-force pair count, and its confidence intervals."""

from __future__ import annotations

import math
import random

import pytest

from trajdistill.eval.auc import auc_with_ci, mann_whitney_u, roc_auc


def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_the_brute_force_pair_count_with_ties(seed):
    rng = random.Random(seed)
    scores = [rng.choice([0.0, 0.5, 1.0, 1.5, 2.0, rng.random()]) for _ in range(60)]
    labels = [rng.random() < 0.4 for _ in range(60)]
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


def test_auc_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(7)
    scores = [round(rng.gauss(0, 1), 1) for _ in range(200)]
    labels = [rng.random() < 0.3 + 0.2 * (s > 0) for s in scores]
    assert roc_auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_perfect_inverted_and_uninformative_scores():
    assert roc_auc([3, 4, 1, 2], [True, True, False, False]) == 1.0
    assert roc_auc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert roc_auc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    assert math.isnan(roc_auc([1, 2], [True, True]))


def test_u_statistics_add_up_over_batches_as_within_batch_pairs():
    a = ([0.1, 0.9, 0.4], [False, True, True])
    b = ([0.3, 0.2, 0.8, 0.5], [True, False, False, True])
    ua, pa = mann_whitney_u(*a)
    ub, pb = mann_whitney_u(*b)
    wins_a = brute_force_auc(*a) * 2
    wins_b = brute_force_auc(*b) * 4
    assert (ua, pa, ub, pb) == pytest.approx((wins_a, 2.0, wins_b, 4.0))


def test_hanley_mcneil_interval_follows_the_formula():
    scores = [0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.4]
    labels = [True, True, True, True, False, False, False, False]
    r = auc_with_ci(scores, labels)
    a, n1, n2 = r.auc, 4, 4
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2))
    assert r.auc == pytest.approx(brute_force_auc(scores, labels))
    assert r.se == pytest.approx(se)
    assert r.low == pytest.approx(max(0.0, a - 1.959964 * se), abs=1e-5)
    assert r.high == pytest.approx(min(1.0, a + 1.959964 * se), abs=1e-5)


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_data():
    rng = random.Random(3)

    def sample(n):
        labels = [rng.random() < 0.5 for _ in range(n)]
        return [rng.gauss(0.8 if y else 0.0, 1.0) for y in labels], labels

    small = auc_with_ci(*sample(40), method="bootstrap", resamples=300)
    large = auc_with_ci(*sample(400), method="bootstrap", resamples=300)
    for r in (small, large):
        assert r.low <= r.auc <= r.high
    assert large.high - large.low < small.high - small.low
