"""Avg@k and unbiased Pass@k, checked against brute-force enumeration, and dataset summaries."""

from __future__ import annotations

import math
from itertools import combinations

import pytest

from trajdistill.eval.metrics import avg_at_k, mean_se, min_detectable_effect, pass_at_k, summarize
from trajdistill.eval.runner import paired_change, summary_markdown
from trajdistill.records import Verdict


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (the first c pass) that contain a passing sample."""
    subsets = list(combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_pass_at_k_matches_enumeration_of_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_edge_cases():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 10, 3) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0            # k = n: one pass is enough
    assert pass_at_k(10, 4, 1) == pytest.approx(0.4)  # Pass@1 is the pass rate
    for bad in [(4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)
    with pytest.raises(TypeError):
        pass_at_k(4.0, 1, 1)


def test_large_n_stays_finite_and_matches_exact_binomials():
    n, c, k = 2000, 37, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)


def test_avg_at_k_accepts_verdicts_or_booleans():
    verdicts = [Verdict(True, "passed"), Verdict(False, "failed"), Verdict(False, "no_answer"), Verdict(True)]
    assert avg_at_k(verdicts) == 0.5
    assert avg_at_k([True, True, False]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        avg_at_k([])


def test_mean_se_is_the_standard_error_of_the_mean():
    mean, se = mean_se([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx(math.sqrt((4 * 0.25 / 3) / 4))
    assert mean_se([0.7]) == (0.7, 0.0)
    assert all(math.isnan(x) for x in mean_se([]))



def test_min_detectable_effect_is_2_80_standard_errors():
    # (1.959964 + 0.841621) * SE: z for two-sided 5 % plus z for 80 % power
    assert min_detectable_effect(0.1, 50) == pytest.approx(0.2801585, abs=1e-6)
    assert min_detectable_effect(0.05, 64) == pytest.approx(0.1400792, abs=1e-6)


def test_min_detectable_effect_without_any_differing_problem_is_the_rule_of_three():
    assert min_detectable_effect(0.0, 32) == 3 / 32  # 9.4 points, not 0
    assert min_detectable_effect(0.0, 300) == 0.01
    # every problem changed by the same 1/3: SE is rounding noise, not a measured 0 + something
    _, se = mean_se([2 / 3 - 1 / 3, 1 / 3 - 0, 1 - 2 / 3])
    assert min_detectable_effect(se, 3) == 1.0
    assert math.isnan(min_detectable_effect(float("nan"), 0))

def test_summarize_averages_over_problems_with_standard_errors():
    counts, n = [0, 2, 4, 1], 4
    summary = summarize(counts, n, [1, 2, 4])
    assert summary["problems"] == 4 and summary["n"] == 4
    assert summary["avg@4"]["mean"] == pytest.approx(7 / 16)
    assert summary["pass@1"]["mean"] == pytest.approx(summary["avg@4"]["mean"])
    per_problem = [pass_at_k(n, c, 2) for c in counts]
    assert (summary["pass@2"]["mean"], summary["pass@2"]["se"]) == pytest.approx(mean_se(per_problem))
    assert summary["pass@4"]["mean"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        summarize(counts, n, [5])
    with pytest.raises(ValueError):
        summarize([5], n, [1])


def _summary(greedy: list[int], correct: list[int], n: int = 4) -> dict:
    ids = [f"p{i}" for i in range(len(greedy))]
    per_problem = {i: {"greedy": g, "correct": c} for i, g, c in zip(ids, greedy, correct)}
    return {"label": "x", "problems": len(ids), "n": n, "k": [1, n], "per_problem": per_problem,
            "greedy": {"mean": sum(greedy) / len(greedy), "se": 0.0},
            f"avg@{n}": {"mean": sum(correct) / (n * len(correct)), "se": 0.0},
            "pass@1": {"mean": 0.0, "se": 0.0}, f"pass@{n}": {"mean": 0.0, "se": 0.0},
            "response_tokens": {"mean": 10.0, "se": 0.0}}


def test_paired_change_is_mean_and_se_of_per_problem_differences():
    before = _summary([0, 1, 0, 0, 1], [0, 2, 1, 0, 4])
    after = _summary([1, 1, 0, 1, 0], [2, 2, 1, 3, 4])
    diffs = [1, 0, 0, 1, -1]
    mean = sum(diffs) / 5
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4 / 5)
    change = paired_change(before, after, "greedy")
    assert (change["mean"], change["se"]) == pytest.approx((mean, se))
    avg = paired_change(before, after, "avg@4")
    assert avg["mean"] == pytest.approx(sum([2, 0, 0, 3, 0]) / 4 / 5)
    pass4 = paired_change(before, after, "pass@4")  # pass@4 with n = 4 is "any correct"
    assert pass4["mean"] == pytest.approx((1 + 0 + 0 + 1 + 0) / 5)
    table = summary_markdown([before, after])
    assert f"| change (paired) | 5 | {100 * mean:+.1f} ± {100 * se:.1f} |" in table


def test_paired_change_refuses_different_problem_sets():
    before, after = _summary([0, 1], [0, 1]), _summary([1, 1, 0], [1, 1, 0])
    assert paired_change(before, after, "greedy") is None
    assert "change (paired)" not in summary_markdown([before, after])
