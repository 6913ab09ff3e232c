"""Core records that travel along the data path: problems -> rollouts -> verdicts.

Plain dataclasses with no behaviour beyond light validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Problem:
    """One task: a prompt, its gold answer and optional privileged information.

    `reference` is a worked solution (the OPSD/TRD teacher's privileged context).
    `tests` holds code tests (`FunctionTests` / `IOTests` from `trajdistill.verify.code`).
    """

    id: str
    prompt: str
    answer: str | None = None
    reference: str | None = None
    tests: Any = None
    source: str = ""
    kind: str = "math"  # "math" or "code": selects the verifier

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("problem id must be non-empty")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"problem {self.id}: prompt must be a non-empty string")


ERROR_STATUSES = ("verifier_error", "verifier_timeout")


@dataclass
class Verdict:
    """The verifier's judgement of one response.

    `status` is "passed", "failed", "no_answer", ... (verifier specific), or one of
    ERROR_STATUSES when the verifier itself failed and the response was not judged at all.
    """

    passed: bool
    status: str = ""
    detail: str = ""

    @property
    def errored(self) -> bool:
        """The verifier failed (crashed or ran out of time): no judgement of the response."""
        return self.status in ERROR_STATUSES


@dataclass
class Rollout:
    """One sampled response to one problem."""

    problem_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    logprobs: list[float] | None = None  # sampler log-probs of response_ids (at its temperature)
    finished: bool = True  # False when cut at max_new_tokens
    verdict: Verdict | None = None
    sample_index: int = 0  # which of the n samples of its prompt
    off_policy: bool = False  # not sampled from the student (a reference or a teacher sample)
    score: float | None = None  # a method's per-rollout score (ReNIO's s_i), for logging
