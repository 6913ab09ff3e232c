"""A sandbox that fails is a verifier error, never a wrong program (no bubblewrap needed)."""

from __future__ import annotations

import pytest

from trajdistill.records import Problem, Verdict
from trajdistill.verify import code as code_module
from trajdistill.verify.code import CodeVerifier, FunctionTests, IOTests, Limits
from trajdistill.verify.sandbox import JobResult

SQUARE = FunctionTests("square", "def check(candidate):\n    assert candidate(2) == 4\n")
ANSWER = "```python\ndef square(x):\n    return x * x\n```"


def _problem(tests) -> Problem:
    return Problem(id="sq", prompt="Write square(x).", tests=tests, kind="code")


@pytest.mark.parametrize("tests", [SQUARE, IOTests([("2\n", "4\n")])])
def test_a_sandbox_that_fails_to_start_is_a_verifier_error(monkeypatch, tests):
    failed = lambda n: [JobResult(None, error="sandbox failed: bwrap: No permissions") for _ in range(n)]
    monkeypatch.setattr(code_module, "run_jobs", lambda jobs, limits: failed(len(jobs)))
    monkeypatch.setattr(code_module, "run_job", lambda job, limits: failed(1)[0])
    verdict = CodeVerifier().check(_problem(tests), ANSWER)
    assert (verdict.passed, verdict.status, verdict.errored) == (False, "verifier_error", True)
    assert verdict.detail == "sandbox: sandbox failed: bwrap: No permissions"


def test_an_exception_while_judging_is_a_verifier_error(monkeypatch):
    def broken(program, tests, limits):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(code_module, "check_program", broken)
    verdict = CodeVerifier().check(_problem(SQUARE), ANSWER)
    assert (verdict.status, verdict.errored) == ("verifier_error", True)
    assert "OSError" in verdict.detail and "Too many open files" in verdict.detail


def test_a_problem_without_tests_is_a_verifier_error():
    verdict = CodeVerifier().check(_problem(None), ANSWER)
    assert (verdict.status, verdict.errored) == ("verifier_error", True)


def test_program_failures_stay_the_programs(monkeypatch):
    monkeypatch.setattr(code_module, "check_program",
                        lambda program, tests, limits: code_module.CodeVerdict("timeout", "wall"))
    verdict = CodeVerifier(Limits()).check(_problem(SQUARE), ANSWER)
    assert (verdict.status, verdict.errored) == ("timeout", False)
    assert not CodeVerifier().check(_problem(SQUARE), "no code here").errored


def test_errored_covers_exactly_the_verifier_statuses():
    statuses = ["passed", "failed", "no_answer", "timeout", "runtime_error", "verifier_error",
                "verifier_timeout"]
    assert [s for s in statuses if Verdict(False, s).errored] == ["verifier_error", "verifier_timeout"]
