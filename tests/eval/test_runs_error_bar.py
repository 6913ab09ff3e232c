"""REDI's error bar: the spread of the n benchmark-wide pass@1 scores (sample j = run j)."""

import math

import numpy as np
import pytest

from trajdistill.eval.runner import fmt, runs_se


def group(passes):
    return [{"problem_id": "p", "sample": j, "passed": bool(p)} for j, p in enumerate(passes)]


def test_runs_se_is_the_std_of_per_run_accuracies_over_sqrt_n():
    table = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0]])  # problems x runs
    per_run = table.mean(axis=0)
    expected = per_run.std(ddof=1) / math.sqrt(4)
    assert runs_se([r for row in table for r in group(row)], 4) == pytest.approx(expected, rel=1e-12)


def test_runs_se_needs_two_runs_and_is_shown_in_brackets():
    assert math.isnan(runs_se(group([1]), 1))
    assert fmt({"mean": 0.5, "se": 0.1, "se_runs": 0.02}) == "50.0 ± 10.0 [± 2.0]"
    assert fmt({"mean": 0.5, "se": 0.1}) == "50.0 ± 10.0"
