"""Math answers: find the final answer in a response, under one of two grading modes.

* `strict` (the default, as in the TRD and REDI papers): the answer is the last non-empty
  `\\boxed{...}` / `\\fbox{...}` (balanced braces; `\\boxed 5` also counts). No box, no answer.
* `lenient`: the same box first; failing that, first hit wins among
  1. the last "the answer is X" / "final answer: X";
  2. the last "#### X" (GSM8K style);
  3. the last number in the last non-empty line.
  Text from a final `\\boxed{` that never closes (a response cut at max_new_tokens) is ignored
  by these fallbacks, so half an answer is not graded.

Comparing an extracted answer with the gold one is `trajdistill.verify.math`'s part.
"""

from __future__ import annotations

import re
from typing import Literal

Grading = Literal["strict", "lenient"]
GRADINGS: tuple[str, ...] = ("strict", "lenient")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_IS_RE = re.compile(r"(?:final answer|the answer)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*(.+)")
_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?")


def _braced(text: str, start: int) -> str | None:
    """Content of the `{...}` opening at `text[start]`, or None if the braces never balance."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete `\\boxed{...}` / `\\fbox{...}` in order (incl. `\\boxed 5`)."""
    found = []
    for match in _BOX_RE.finditer(text):
        rest = match.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            content = _braced(text, rest)
        elif rest > match.end():  # `\boxed 5`: the argument is the next token
            token = re.match(r"[^\s$.,]+", text[rest:])
            content = token.group(0) if token else None
        else:
            content = None
        if content is not None:
            found.append(content)
    return found


def _clean(answer: str) -> str:
    """Strip what surrounds an answer in prose: `$...$`, bold markers, a trailing full stop."""
    answer = answer.strip().strip("*").strip()
    answer = re.sub(r"^\$+|\$+$", "", answer).strip()
    return answer.rstrip(".").strip()


def _after_phrase(text: str, pattern: re.Pattern) -> str | None:
    """The clause after the last match of `pattern`, up to the end of its sentence or line."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    clause = matches[-1].group(1).split("\n")[0]
    clause = re.split(r"\.(?:\s|$)", clause)[0]  # sentence end, but keep decimals like 2.5
    return _clean(clause) or None


def _last_line_number(text: str) -> str | None:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    numbers = _NUMBER_RE.findall(lines[-1])
    return numbers[-1].replace(",", "") if numbers else None


def _before_open_box(text: str) -> str:
    """Text before a last box that never closes: a truncated answer must not leak into fallbacks."""
    markers = list(_BOX_RE.finditer(text))
    if markers and not boxed_contents(text[markers[-1].start():]):
        return text[: markers[-1].start()]
    return text



def check_grading(grading: str) -> None:
    if grading not in GRADINGS:
        raise ValueError(f"grading must be one of {GRADINGS}, got {grading!r}")


def extract_answer(response: str, grading: Grading = "strict") -> str | None:
    """The final answer in `response` under `grading` (see the module docstring), or None."""
    check_grading(grading)
    if not response or not response.strip():
        return None
    boxes = [b.strip() for b in boxed_contents(response) if b.strip()]
    if boxes:
        return boxes[-1]
    if grading == "strict":
        return None
    response = _before_open_box(response)
    for pattern in (_ANSWER_IS_RE, _HASHES_RE):
        answer = _after_phrase(response, pattern)
        if answer:
            return answer
    return _last_line_number(response)
