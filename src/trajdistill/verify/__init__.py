"""Verifiers judge a response to a problem: math answers (math-verify) and code (sandboxed tests)."""

from __future__ import annotations

from typing import Protocol

from trajdistill.records import Problem, Verdict


class Verifier(Protocol):
    def check(self, problem: Problem, response: str) -> Verdict: ...
