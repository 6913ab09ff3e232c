"""HumanEval's own canonical solutions pass the sandboxed judge, answered as a chat model would."""

from __future__ import annotations

import shutil

import pytest

from trajdistill.data import load_problems
from trajdistill.verify.code import CodeVerifier

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


def _chat_answer(program: str) -> str:
    return f"Here is the completed function.\n\n```python\n{program}```\n\nIt passes the examples."


@pytest.fixture(scope="module")
def humaneval():
    return load_problems("builtin:humaneval")


def test_every_canonical_solution_passes(humaneval):
    verdicts = CodeVerifier().check_many(humaneval, [_chat_answer(p.reference) for p in humaneval])
    failures = {p.id: (v.status, v.detail) for p, v in zip(humaneval, verdicts) if not v.passed}
    assert len(humaneval) == 164 and failures == {}


def test_answers_without_the_stubs_helpers_pass_too(humaneval):
    """A chat answer often repeats only the function asked for; the stub's imports and helpers
    (`poly` for `find_zero`, `encode_cyclic` for `decode_cyclic`) come from the prelude."""
    picked = [p for p in humaneval if p.id in ("HumanEval/32", "HumanEval/38", "HumanEval/10")]
    entry_only = []
    for p in picked:
        start = p.reference.index(f"def {p.tests.entry_point}(")
        entry_only.append(_chat_answer(p.reference[start:]))
    assert [v.status for v in CodeVerifier().check_many(picked, entry_only)] == ["passed"] * 3


def test_wrong_solutions_fail(humaneval):
    first = humaneval[0]  # has_close_elements: any two numbers closer than the threshold?
    wrong = [_chat_answer(first.reference.replace("< threshold", "> threshold")),
             _chat_answer(f"def {first.tests.entry_point}(numbers, threshold):\n    return False\n"),
             "I would loop over all pairs and compare their distance."]
    verdicts = CodeVerifier().check_many([first] * 3, wrong)
    assert [v.status for v in verdicts] == ["failed", "failed", "no_answer"]
