"""TRD's C.4 prompts render as published, and a copied template head is stripped from refinements."""

import pytest

from trajdistill.methods.trd_prompts import (
    CODE_INSTRUCTION,
    CODE_REFINE_INSTRUCTION,
    MATH_INSTRUCTION,
    initial_instruction,
    refinement_text,
    strip_echo,
)
from trajdistill.records import Problem

MATH = Problem(id="m", prompt="What is 12 + 30?", answer="42",
               reference="12 + 30 = 42. The answer is \\boxed{42}.")
CODE = Problem(id="c", prompt="Write `add(a, b)`.", reference="def add(a, b):\n    return a + b\n", kind="code")
Y_O = "12 + 30 = 52. So \\boxed{52}."


def test_opsd_math_refinement_shows_problem_reference_and_initial_solution_in_order():
    text = refinement_text(MATH, Y_O, "opsd")
    assert text.startswith("\nYour task is to rewrite your mathematical solution using the reference solution as guidance.")
    heads = ["**Problem:**\nWhat is 12 + 30?", "**Reference Solution:**\n" + MATH.reference,
             "**Your Initial Solution:**\n" + Y_O, "**Instructions:**\n1. Review the reference solution"]
    positions = [text.index(h) for h in heads]
    assert positions == sorted(positions)
    assert text.endswith("4. Output ONLY the rewritten solution\n " + MATH_INSTRUCTION)


def test_opd_math_refinement_hides_the_reference():
    text = refinement_text(MATH, Y_O, "opd")
    assert text.startswith("\nYour task is to rewrite your mathematical solution.\n")
    assert "Reference" not in text and MATH.reference not in text
    assert "1. Preserve the overall structure and reasoning path of your original solution" in text
    assert "**Your Initial Solution:**\n" + Y_O in text
    assert text.endswith("4. Output ONLY the rewritten solution\n " + MATH_INSTRUCTION)


def test_opsd_code_refinement_fences_the_reference_and_asks_for_a_python_block():
    text = refinement_text(CODE, "def add(a, b): return a - b", "opsd")
    assert text.startswith("\nYour task is to rewrite your Python solution using the reference solution as guidance.")
    assert "**Reference Solution:**\n```python\ndef add(a, b):\n    return a + b\n```\n" in text
    assert "1. Fix correctness issues and edge cases" in text
    assert text.endswith("3. Output ONLY the rewritten Python solution\n " + CODE_REFINE_INSTRUCTION)


def test_opd_code_refinement_hides_the_reference():
    text = refinement_text(CODE, "def add(a, b): return a - b", "opd")
    assert text.startswith("\nYour task is to rewrite your Python solution.\n")
    assert "Reference" not in text and "return a + b" not in text
    assert text.endswith(CODE_REFINE_INSTRUCTION)


def test_braces_in_problems_and_rollouts_survive_rendering():
    p = Problem(id="b", prompt="Simplify {x}.", reference="\\boxed{x}")
    text = refinement_text(p, "\\frac{1}{2} {problem}", "opsd")
    assert "Simplify {x}." in text and "\\frac{1}{2} {problem}" in text and "\\boxed{x}" in text


def test_opsd_refinement_without_reference_is_an_error():
    with pytest.raises(ValueError, match="reference"):
        refinement_text(Problem(id="x", prompt="1+1?"), "2", "opsd")


def test_initial_instruction_selects_the_code_prompt_for_code_problems():
    assert initial_instruction(MATH) == MATH_INSTRUCTION
    assert initial_instruction(MATH, "Box it.") == "Box it."
    assert initial_instruction(CODE) == CODE_INSTRUCTION


def test_clean_refinement_is_left_alone():
    text = "12 + 30 = 42.\nThe answer is \\boxed{42}."
    assert strip_echo(text, MATH) == (text, False)


def test_full_template_echo_is_stripped_up_to_the_solution():
    echoed = refinement_text(MATH, Y_O, "opsd").strip() + "\n\n12 + 30 = 42. The answer is \\boxed{42}."
    assert strip_echo(echoed, MATH) == ("12 + 30 = 42. The answer is \\boxed{42}.", True)


def test_echoed_problem_header_and_lead_in_are_stripped():
    text = "**Problem:**\nWhat is 12 + 30?\n\n**Rewritten Solution:**\n12 + 30 = 42, so \\boxed{42}."
    assert strip_echo(text, MATH) == ("12 + 30 = 42, so \\boxed{42}.", True)
    assert strip_echo("Here is the rewritten solution:\n\\boxed{42}", MATH) == ("\\boxed{42}", True)


def test_template_words_inside_a_solution_are_kept():
    text = "First, the problem: add the tens.\n**Problem:**\n\\boxed{42}"
    assert strip_echo(text, MATH) == (text, False)


def test_echo_only_leaves_nothing():
    assert strip_echo(refinement_text(MATH, Y_O, "opd"), MATH) == ("", True)
