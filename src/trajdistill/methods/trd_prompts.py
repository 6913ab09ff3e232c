"""TRD's prompts (TRD paper, section C.4): the stage-1 initial-response instructions and the four
stage-2 refinement templates (OPD / OPSD x math / code).

The template text and whitespace follow the authors' release (`recipe/opd/generation/
y_r_prepare.py`): each template starts with a newline, and the answer-format instruction is
appended after one space. OPD refinement hides the reference solution; OPSD shows it.
"""

from __future__ import annotations

import re

from trajdistill.records import Problem

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = ("You will be given a programming problem. Write a correct Python program that "
                    "solves it. Return only the code inside a single ```python code block.")
CODE_REFINE_INSTRUCTION = "Return only the corrected Python code inside a single ```python code block."

OPSD_MATH = """
Your task is to rewrite your mathematical solution using the reference solution as guidance.

**Problem:**
{problem}

**Reference Solution:**
{reference}

**Your Initial Solution:**
{initial}

**Instructions:**
1. Review the reference solution to understand the target reasoning and method
2. Rewrite your solution so it is consistent with the reference solution
3. Keep useful parts of your original structure and style when appropriate
4. Output ONLY the rewritten solution
"""

OPD_MATH = """
Your task is to rewrite your mathematical solution.

**Problem:**
{problem}

**Your Initial Solution:**
{initial}

**Instructions:**
1. Preserve the overall structure and reasoning path of your original solution
2. Identify and fix errors in computation or logic
3. Keep correct intermediate steps and meaningful work
4. Output ONLY the rewritten solution
"""

OPSD_CODE = """
Your task is to rewrite your Python solution using the reference solution as guidance.

**Problem:**
{problem}

**Reference Solution:**
```python
{reference}
```

**Your Initial Solution:**
{initial}

**Instructions:**
1. Fix correctness issues and edge cases
2. Preserve useful parts of the original approach when appropriate
3. Output ONLY the rewritten Python solution
"""

OPD_CODE = """
Your task is to rewrite your Python solution.

**Problem:**
{problem}

**Your Initial Solution:**
{initial}

**Instructions:**
1. Fix correctness issues and edge cases
2. Preserve useful parts of the original approach when appropriate
3. Output ONLY the rewritten Python solution
"""

TEMPLATES = {("opd", "math"): OPD_MATH, ("opsd", "math"): OPSD_MATH,
             ("opd", "code"): OPD_CODE, ("opsd", "code"): OPSD_CODE}


def task_of(problem: Problem) -> str:
    return "code" if problem.kind == "code" else "math"


def initial_instruction(problem: Problem, math_instruction: str = MATH_INSTRUCTION) -> str:
    """Stage-1 answer-format instruction: `prompt.instruction` for math, C.4's code instruction."""
    return CODE_INSTRUCTION if task_of(problem) == "code" else math_instruction


def refinement_text(problem: Problem, initial: str, setting: str,
                    math_instruction: str = MATH_INSTRUCTION) -> str:
    """The user turn of the stage-2 refinement prompt for `problem` and the raw rollout `initial`."""
    task = task_of(problem)
    if setting == "opsd" and not problem.reference:
        raise ValueError(f"problem {problem.id}: TRD-OPSD refinement needs a reference solution")
    template = TEMPLATES[(setting, task)]
    # str.replace, not str.format: problems, references and rollouts contain braces (\boxed{}).
    text = template.replace("{problem}", problem.prompt).replace("{initial}", initial)
    if setting == "opsd":
        text = text.replace("{reference}", (problem.reference or "").strip("\n"))
    answer_format = CODE_REFINE_INSTRUCTION if task == "code" else math_instruction
    return text + " " + answer_format


# -- echo stripping ---------------------------------------------------------------------------
# Lines a refinement may copy from its template before the rewritten solution starts.
_ECHO_LINES = [
    r"your task is to rewrite your (mathematical|python) solution.*",
    r"\**(problem|reference solution|your initial solution|instructions)\**:?\**",
    r"\d\.\s*(review the reference solution|rewrite your solution so it is consistent|keep useful parts"
    r"|output only the rewritten|preserve the overall structure|identify and fix errors"
    r"|keep correct intermediate steps|fix correctness issues|preserve useful parts).*",
    r"please reason step by step, and put your final answer within \\boxed\{\}\.?",
    r"return only the corrected python code inside a single ```python code block\.?",
]
_ECHO_RE = re.compile(r"^\s*(?:" + "|".join(_ECHO_LINES) + r")\s*$", re.IGNORECASE)
_LEAD_IN_RE = re.compile(
    r"^\s*(?:\*\*|#+\s*)?(?:here is |here's )?(?:the |my )?(?:rewritten|refined|revised|corrected)"
    r"(?: python)? (?:solution|code)(?: is)?\s*:?\s*(?:\*\*)?\s*:?\s*\n", re.IGNORECASE)


def strip_echo(text: str, problem: Problem | None = None) -> tuple[str, bool]:
    """Remove a copied template head and a "Rewritten solution:" lead-in; returns (text, stripped).

    An echo is recognised only when the text *starts* with a template line (task sentence, section
    header, numbered instruction, answer-format sentence). Everything up to the last template line
    is dropped (the echoed problem, reference and initial solution sit between such lines), then
    any lines of the problem statement that directly follow it.
    """
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    out = text
    if first is not None and _ECHO_RE.match(lines[first]):
        cut = max(i for i, line in enumerate(lines) if _ECHO_RE.match(line)) + 1
        problem_lines = {ln.strip() for ln in problem.prompt.split("\n") if ln.strip()} if problem else set()
        while cut < len(lines) and (not lines[cut].strip() or lines[cut].strip() in problem_lines):
            cut += 1
        out = "\n".join(lines[cut:])
    lead = _LEAD_IN_RE.match(out)
    if lead:
        out = out[lead.end():]
    out = out.strip()
    return out, out != text.strip()
