"""Verifiers judge a response to a problem: math answers (math-verify) and code (sandboxed tests)."""

from __future__ import annotations

from typing import Protocol

from trajdistill.records import Problem, Verdict


class Verifier(Protocol):
    def check(self, problem: Problem, response: str) -> Verdict: ...


class AutoVerifier:
    """Dispatch on `problem.kind`; each verifier is built on first use.

    `grading` ("strict" | "lenient") is passed to the math verifier (`MathVerifier`).
    """

    def __init__(self, grading: str = "strict") -> None:
        self.grading = grading
        self._by_kind: dict[str, Verifier] = {}

    def _get(self, kind: str) -> Verifier:
        if kind not in self._by_kind:
            if kind == "math":
                from trajdistill.verify.math import MathVerifier

                self._by_kind[kind] = MathVerifier(grading=self.grading)
            elif kind == "code":
                from trajdistill.verify.code import CodeVerifier

                self._by_kind[kind] = CodeVerifier()
            else:
                raise ValueError(f"no verifier for problem kind '{kind}'")
        return self._by_kind[kind]

    def check(self, problem: Problem, response: str) -> Verdict:
        return self._get(problem.kind).check(problem, response)

    __call__ = check
