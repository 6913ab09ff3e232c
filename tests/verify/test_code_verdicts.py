"""Honest verdicts for ordinary programs, in both test styles, and the Verifier slot."""

from __future__ import annotations

import shutil

import pytest

from trajdistill.records import Problem
from trajdistill.verify.code import (CodeVerifier, FunctionTests, IOTests, Limits, check_program,
                                     check_programs)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

FAST = Limits(timeout_s=3.0, cpu_s=2, memory_bytes=256 << 20)
SQUARE = FunctionTests("square", "def check(candidate):\n"
                                 "    assert candidate(2) == 4\n"
                                 "    assert candidate(-3) == 9\n")


@pytest.mark.parametrize("program, status", [
    ("def square(x):\n    return x * x\n", "passed"),
    ("def square(x):\n    return x + x\n", "failed"),
    ("def square(x) return x\n", "syntax_error"),
    ("def square(x):\n    return undefined_name\n", "runtime_error"),
    ("raise RuntimeError('at import')\n", "runtime_error"),
    ("def other(x):\n    return x * x\n", "failed"),
])
def test_function_test_statuses(program, status):
    assert check_program(program, SQUARE, FAST).status == status


def test_failure_names_the_first_failing_assert_and_the_call():
    verdict = check_program("def square(x):\n    return 4\n", SQUARE, FAST)
    assert verdict.status == "failed"
    assert "candidate(-3) == 9" in verdict.detail and "square(-3) returned 4" in verdict.detail


def test_mbpp_style_asserts_name_the_function():
    tests = FunctionTests.from_asserts("cube", ["assert cube(2) == 8", "assert cube(0) == 0"])
    assert check_program("def cube(x):\n    return x ** 3\n", tests, FAST).passed
    failed = check_program("def cube(x):\n    return x * 3\n", tests, FAST)
    assert failed.status == "failed" and "cube(0) == 0" not in failed.detail


def test_plain_data_round_trips_with_types_intact():
    tests = FunctionTests("f", "def check(candidate):\n"
                               "    assert candidate() == ((1, 2), [3], {4}, frozenset({5}), {'k': (6,)},"
                               " b'x', 1.5, float('inf'), 2j, None, True)\n"
                               "    assert type(candidate()[0]) is tuple\n")
    program = ("def f():\n    return ((1, 2), [3], {4}, frozenset({5}), {'k': (6,)}, b'x', 1.5,"
               " float('inf'), 2j, None, True)\n")
    assert check_program(program, tests, FAST).passed
    as_list = program.replace("((1, 2),", "([1, 2],")
    assert check_program(as_list, tests, FAST).status == "failed"


def test_exceptions_the_tests_expect_and_in_place_changes_cross_over():
    tests = FunctionTests("pop_first", "def check(candidate):\n"
                                       "    items = [1, 2, 3]\n"
                                       "    assert candidate(items) == 1\n"
                                       "    assert items == [2, 3]\n"
                                       "    try:\n"
                                       "        candidate([])\n"
                                       "    except IndexError:\n"
                                       "        pass\n"
                                       "    else:\n"
                                       "        raise AssertionError('no IndexError')\n")
    assert check_program("def pop_first(xs):\n    return xs.pop(0)\n", tests, FAST).passed


def test_tests_may_call_helper_functions_of_the_program():
    """HumanEval/38-style: check uses encode_cyclic, defined in the program."""
    tests = FunctionTests("decode", "def check(candidate):\n"
                                    "    for s in ['abc', 'hello world']:\n"
                                    "        assert candidate(encode(s)) == s\n")
    program = "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    return s[::-1]\n"
    assert check_program(program, tests, FAST).passed


def test_prelude_supplies_imports_the_answer_left_out():
    tests = FunctionTests("head", "def check(candidate):\n    assert candidate([5, 6]) == 5\n",
                          prelude="from typing import List")
    assert check_program("def head(xs: List[int]) -> int:\n    return xs[0]\n", tests, FAST).passed


def test_io_statuses_and_whitespace_tolerance():
    tests = IOTests([("2 3\n", "5\n"), ("10 -10\n", "0")])
    good = "a, b = map(int, input().split())\nprint(a + b, end='  \\n\\n')\n"
    assert check_program(good, tests, FAST).status == "passed"
    wrong = check_program("a, b = map(int, input().split())\nprint(a * b)\n", tests, FAST)
    assert wrong.status == "failed" and wrong.detail.startswith("case 1/2")
    assert check_program("print(", tests, FAST).status == "syntax_error"
    assert check_program("import sys\nsys.exit(2)\n", tests, FAST).status == "runtime_error"
    assert check_program("x = bytearray(1 << 34)\n", tests, FAST).status == "memory"


def test_pool_keeps_order():
    programs = [(f"def square(x):\n    return x * x + {i % 2}\n", SQUARE) for i in range(6)]
    verdicts = check_programs(programs, FAST, workers=2)
    assert [v.status for v in verdicts] == ["passed", "failed"] * 3


def test_code_verifier_fills_the_verifier_slot():
    problem = Problem(id="sq", prompt="Write square(x).", tests=SQUARE, kind="code")
    verifier = CodeVerifier(FAST)
    good = verifier.check(problem, "Sure:\n```python\ndef square(x):\n    return x * x\n```")
    assert (good.passed, good.status) == (True, "passed")
    assert verifier.check(problem, "```python\ndef square(x):\n    return 0\n```").status == "failed"
    assert verifier.check(problem, "no idea").status == "no_answer"
    many = verifier.check_many([problem, problem], ["```python\ndef square(x): return x*x\n```", ""])
    assert [v.passed for v in many] == [True, False]
