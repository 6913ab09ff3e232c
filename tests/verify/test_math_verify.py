"""Math answer extraction and equivalence: math-verify behind a worker process with a time limit."""

from __future__ import annotations

import io
import json
import sys
import threading
import time

import pytest

from trajdistill import UserError
from trajdistill.records import Problem
from trajdistill.verify import Verifiers
from trajdistill.verify import math as math_module
from trajdistill.verify.math import MathVerifier, boxed_contents, extract_answer, verify_math


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier()
    yield v
    v.close()


# --- extraction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("response, expected", [
    ("So the total is \\boxed{42}.", "42"),
    ("First \\boxed{1}, then corrected: \\boxed{2}", "2"),                      # last box wins
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),                                  # nested braces
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("The answer is \\fbox{7}", "7"),
    ("our answer is $\\boxed 9$.", "9"),                                        # brace-less box (MATH)
    ("Put it in \\boxed{}. The result is \\boxed{5}", "5"),
    ("I will write \\boxed{12} and then \\boxed{}", "12"),                      # empty box ignored
    ("The answer is 3, so \\boxed{4}\n#### 5", "4"),                            # a box beats the phrases
])
@pytest.mark.parametrize("grading", ["strict", "lenient"])
def test_extract_answer_takes_the_last_box_in_both_modes(response, expected, grading):
    assert extract_answer(response, grading) == expected


@pytest.mark.parametrize("response, expected", [
    ("The answer is 17.", "17"),
    ("The final answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("Final answer: 2.5 meters", "2.5 meters"),
    ("so\n#### 1,234", "1,234"),
    ("We add 3 and 4.\nThat makes 7 apples", "7"),                              # last number, last line
    ("Total: 1,000 dollars", "1000"),
    ("It drops to -12", "-12"),
])
def test_lenient_extraction_falls_back_to_phrases_and_numbers(response, expected):
    assert extract_answer(response, "lenient") == expected
    assert extract_answer(response, "strict") is None  # the papers grade the box only


@pytest.mark.parametrize("response", ["", "   \n", "I do not know.", "\\boxed{12", "no digits here\n\nnone"])
@pytest.mark.parametrize("grading", ["strict", "lenient"])
def test_extract_answer_is_none_without_an_answer(response, grading):
    assert extract_answer(response, grading) is None


def test_strict_is_the_default_and_unknown_modes_are_refused():
    assert extract_answer("The answer is 17.") is None
    with pytest.raises(ValueError, match="grading"):
        extract_answer("\\boxed{1}", "loose")
    with pytest.raises(ValueError, match="grading"):
        MathVerifier(grading="loose")


def test_unbalanced_box_is_not_taken_as_an_answer():
    assert boxed_contents("\\boxed{3} and \\boxed{4") == ["3"]


# --- equivalence --------------------------------------------------------------------------------

@pytest.mark.parametrize("response, gold", [
    ("\\boxed{18}", "18"),
    ("\\boxed{0.5}", "\\frac{1}{2}"),                   # decimal vs fraction
    ("\\boxed{1/2}", "0.5"),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac12"),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
    ("\\boxed{1,000}", "1000"),                         # thousands separator
    ("\\boxed{1{,}000}", "1000"),
    ("\\boxed{-7}", "-7"),
    ("\\boxed{5 \\text{ cm}}", "5"),                    # units
    ("\\boxed{18\\text{ dollars}}", "18"),
    ("\\boxed{\\$18}", "18"),
    ("\\boxed{50\\%}", "50\\%"),                        # percentages
    ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),  # tuples
    ("\\boxed{[1, 2)}", "[1,2)"),                       # intervals
    ("\\boxed{11.50}", "11.5"),
    ("\\boxed{10.0}", "10"),
    ("\\boxed{x = 3}", "3"),
])
def test_equivalent_answers_pass(response, gold):
    assert verify_math(response, gold)


@pytest.mark.parametrize("response, gold", [
    ("The answer is $\\frac{3}{4}$.", "0.75"),          # fallback extraction, then LaTeX
    ("so we get\n#### 72", "72"),
])
def test_unboxed_answers_pass_only_when_lenient(response, gold):
    assert verify_math(response, gold, grading="lenient")
    assert not verify_math(response, gold)


@pytest.mark.parametrize("response, gold", [
    ("\\boxed{17}", "18"),
    ("\\boxed{-7}", "7"),                               # sign matters
    ("\\boxed{0.51}", "\\frac{1}{2}"),
    ("\\boxed{18} then \\boxed{19}", "18"),             # the last box counts, not any box
    ("\\boxed{\\sqrt{3}}", "2\\sqrt{2}"),
    ("\\boxed{hello}", "5"),                            # garbage
    ("", "5"),
    ("I think it is big.", "5"),
    ("\\boxed{(1, 2)}", "(2, 1)"),
])
def test_wrong_answers_fail(response, gold):
    assert not verify_math(response, gold)


# --- the Verifier protocol ----------------------------------------------------------------------

def _problem(answer: str | None) -> Problem:
    return Problem(id="p1", prompt="What is 9 * 2?", answer=answer)


def test_verdict_statuses(verifier):
    assert verifier.check(_problem("18"), "9 * 2 = \\boxed{18}").status == "passed"
    wrong = verifier.check(_problem("18"), "\\boxed{16}")
    assert (wrong.passed, wrong.status) == (False, "failed") and "16" in wrong.detail
    none = verifier.check(_problem("18"), "I am not sure.")
    assert (none.passed, none.status) == (False, "no_answer")


@pytest.mark.parametrize("response, strict, lenient", [
    ("9 times 2 is 18.", "no_answer", "passed"),                    # no box
    ("9 times 2 is 16.", "no_answer", "failed"),
    ("So \\boxed{18}.", "passed", "passed"),                         # one box
    ("\\boxed{16}, no wait: \\boxed{18}", "passed", "passed"),        # several: the last counts
    ("\\boxed{18}, no wait: \\boxed{16}", "failed", "failed"),
    ("The answer is 18, or \\boxed{16}", "failed", "failed"),        # a box beats the phrase
])
def test_strict_and_lenient_verdicts(response, strict, lenient):
    assert MathVerifier().grading == "strict"
    for grading, status in (("strict", strict), ("lenient", lenient)):
        verdict = MathVerifier(grading=grading).check(_problem("18"), response)
        assert (verdict.status, verdict.passed) == (status, status == "passed"), grading


def test_auto_verifier_passes_grading_to_the_math_verifier():
    assert not Verifiers().check(_problem("18"), "It is 18.").passed
    assert Verifiers({"math": {"grading": "lenient"}}).check(_problem("18"), "It is 18.").passed


def test_missing_gold_answer_is_a_user_error(verifier):
    with pytest.raises(UserError, match="p1"):
        verifier.check(_problem(None), "\\boxed{1}")


def test_auto_verifier_routes_math_problems():
    assert Verifiers().check(_problem("\\frac{1}{2}"), "\\boxed{0.5}").passed


def test_slow_comparison_times_out_and_the_worker_recovers():
    # sympy tries to evaluate this sum term by term: minutes, far beyond the 0.5 s limit.
    slow = MathVerifier(timeout=0.5)
    try:
        start = time.monotonic()
        verdict = slow.check(_problem("1"), "\\boxed{\\sum_{k=1}^{10^{6}} k^{k}}")
        assert (verdict.status, verdict.passed, verdict.errored) == ("verifier_timeout", False, True)
        assert time.monotonic() - start < 5
        assert slow.check(_problem("\\frac{1}{2}"), "\\boxed{0.5}").passed  # a fresh worker answers
    finally:
        slow.close()


# --- verifier failures are not wrong answers ---------------------------------------------------

def _raise_on(pred_to_fail):
    real = math_module.math_verify_compare

    def compare(gold, pred):
        if pred == pred_to_fail:
            raise TypeError("sympy could not\nhandle it")
        return real(gold, pred)

    return compare


def test_a_math_verify_exception_is_a_verifier_error(monkeypatch):
    monkeypatch.setattr(math_module, "math_verify_compare", _raise_on("\\sqrt{4}"))
    inproc = MathVerifier(timeout=None)  # math-verify runs in this process, where the patch is
    verdict = inproc.check(_problem("2"), "\\boxed{\\sqrt{4}}")
    assert (verdict.passed, verdict.status, verdict.errored) == (False, "verifier_error", True)
    assert "TypeError: sympy could not" in verdict.detail and "\n" not in verdict.detail
    wrong = inproc.check(_problem("2"), "\\boxed{\\sqrt{5}}")
    assert (wrong.status, wrong.errored) == ("failed", False)
    monkeypatch.setattr(math_module, "_default", inproc)
    assert not verify_math("\\boxed{\\sqrt{4}}", "2")  # the yes/no helper reads it as "no"
    assert verify_math("\\boxed{\\sqrt{9}}", "3")


def test_the_worker_reports_an_exception_instead_of_a_verdict(monkeypatch):
    monkeypatch.setattr(math_module, "math_verify_compare", _raise_on("boom"))
    replies = io.StringIO()
    requests = [{"gold": "1", "pred": "boom"}, {"gold": "\\frac{1}{2}", "pred": "0.5"}]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in requests)))
    monkeypatch.setattr(sys, "stdout", replies)
    math_module._serve()
    lines = replies.getvalue().splitlines()
    assert lines[0] == "ready"
    assert json.loads(lines[1]) == {"error": "math-verify failed: TypeError: sympy could not"}
    assert json.loads(lines[2]) == {"ok": True}


@pytest.mark.parametrize("reply, detail", [
    ('{"error": "math-verify failed: TypeError: x"}\n', "math-verify failed: TypeError: x"),
    ("", "worker exited unexpectedly"),                          # EOF: the worker died
])
def test_worker_failures_are_verifier_errors_and_the_worker_recovers(monkeypatch, reply, detail):
    verifier = MathVerifier()
    try:
        assert verifier.check(_problem("\\frac{1}{3}"), "\\boxed{2/6}").passed  # starts the worker
        real_read = math_module._Worker._read_line
        monkeypatch.setattr(math_module._Worker, "_read_line", lambda self, timeout: reply)
        verdict = verifier.check(_problem("\\frac{1}{2}"), "\\boxed{0.5}")
        assert (verdict.passed, verdict.status, verdict.errored) == (False, "verifier_error", True)
        assert detail in verdict.detail
        monkeypatch.setattr(math_module._Worker, "_read_line", real_read)
        again = verifier.check(_problem("\\frac{1}{2}"), "\\boxed{0.5}")  # not cached as wrong
        assert (again.passed, again.status) == (True, "passed")
    finally:
        verifier.close()


def test_a_worker_that_cannot_start_is_a_verifier_error(monkeypatch):
    def no_fork(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(math_module.subprocess, "Popen", no_fork)
    verdict = MathVerifier().check(_problem("\\frac{1}{2}"), "\\boxed{0.5}")
    assert (verdict.status, verdict.errored) == ("verifier_error", True)
    assert "cannot start" in verdict.detail


def test_ordinary_verdicts_are_not_errors(verifier):
    for response in ("\\boxed{18}", "\\boxed{16}", "no box"):
        assert not verifier.check(_problem("18"), response).errored


def test_works_from_worker_threads(verifier):
    # math-verify's own signal-based timeout raises outside the main thread; ours must not.
    cases = [("\\boxed{0.25}", "\\frac{1}{4}", True), ("\\boxed{\\sqrt{4}}", "2", True),
             ("\\boxed{3/5}", "0.5", False)] * 4
    results: list[tuple[bool, bool]] = []

    def run(response, gold, expected):
        results.append((verifier.check(_problem(gold), response).passed, expected))

    threads = [threading.Thread(target=run, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(cases) and all(got == want for got, want in results)


def test_verification_is_fast_enough_for_thousands_of_samples(verifier):
    start = time.monotonic()
    for i in range(200):
        verifier.compare(f"\\frac{{{i}}}{{7}}", f"{i + 1}/7")  # the sympy path, no cache hits
    assert (time.monotonic() - start) / 200 < 0.02
