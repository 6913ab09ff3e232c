"""Verifiers judge responses to problems, looked up by `Problem.kind`: math answers (math-verify)
and code (sandboxed tests) are built in; register your own kind with `register_verifier`.

Every caller verifies in batches (`Verifiers.check_many`), so a verifier that can work in parallel
(the code verifier's sandbox pool) does.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from trajdistill.records import Problem, Verdict


class Verifier(Protocol):
    def check(self, problem: Problem, response: str) -> Verdict: ...

    def check_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]: ...


def _math(**options: Any) -> Verifier:
    from trajdistill.verify.math import MathVerifier

    return MathVerifier(**options)


def _code(**options: Any) -> Verifier:
    from trajdistill.verify.code import CodeVerifier

    return CodeVerifier(**options)


_FACTORIES: dict[str, Callable[..., Verifier]] = {"math": _math, "code": _code}


def register_verifier(kind: str, factory: Callable[..., Verifier]) -> None:
    """Problems of `kind` are judged by `factory(**options)` (built on first use)."""
    _FACTORIES[kind] = factory


def verifier_kinds() -> list[str]:
    return sorted(_FACTORIES)


class FunctionVerifier:
    """A plain `fn(problem, response) -> Verdict` as a verifier."""

    def __init__(self, fn: Callable[[Problem, str], Verdict]) -> None:
        self.fn = fn

    def check(self, problem: Problem, response: str) -> Verdict:
        return self.fn(problem, response)

    def check_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        return [self.fn(p, r) for p, r in zip(problems, responses)]


class Verifiers:
    """One verifier per problem kind, built on first use with that kind's options."""

    def __init__(self, options: dict[str, dict[str, Any]] | None = None, *,
                 every_kind: Verifier | None = None) -> None:
        self.options = options or {}
        self._by_kind: dict[str, Verifier] = {}
        self._every_kind = every_kind

    @classmethod
    def of(cls, fn: Callable[[Problem, str], Verdict]) -> "Verifiers":
        """Judge every kind with one function (tests, quick experiments)."""
        return cls(every_kind=FunctionVerifier(fn))

    def get(self, kind: str) -> Verifier:
        if self._every_kind is not None:
            return self._every_kind
        if kind not in self._by_kind:
            if kind not in _FACTORIES:
                raise ValueError(f"no verifier for problem kind '{kind}' (known: {', '.join(verifier_kinds())})")
            self._by_kind[kind] = _FACTORIES[kind](**self.options.get(kind, {}))
        return self._by_kind[kind]

    def check(self, problem: Problem, response: str) -> Verdict:
        return self.check_many([problem], [response])[0]

    def check_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        """Verdicts in input order; each kind's share goes to its verifier in one batch."""
        verdicts: list[Verdict | None] = [None] * len(problems)
        by_kind: dict[str, list[int]] = {}
        for i, problem in enumerate(problems):
            by_kind.setdefault(problem.kind, []).append(i)
        for kind, idx in by_kind.items():
            batch = self.get(kind).check_many([problems[i] for i in idx], [responses[i] for i in idx])
            for i, verdict in zip(idx, batch):
                verdicts[i] = verdict
        return verdicts  # type: ignore[return-value]

    __call__ = check


def check_all(verify: "Verifiers | Callable[[Problem, str], Verdict]", problems: Sequence[Problem],
              responses: Sequence[str]) -> list[Verdict]:
    """Batch verification through `Verifiers`, or one call per response for a plain function
    (tests inject those)."""
    if not isinstance(verify, Verifiers):
        verify = Verifiers.of(verify)
    return verify.check_many(problems, responses)
