"""The generated arithmetic family: correct answers, worked solutions, stable ids, disjoint splits."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from trajdistill import UserError
from trajdistill.data import (ARITH_MIX, ARITH_MIX_COUNT, ArithSpec, generate_component, load_problems,
                              split_problems)
from trajdistill.verify.math import extract_answer

_BARE = re.compile(r"What is (\d+) ([-+*/]) (\d+)\?")


def _bare_value(prompt: str) -> int:
    a, op, b = _BARE.fullmatch(prompt).groups()
    a, b = int(a), int(b)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("digits", [1, 2, 3])
def test_bare_answers_are_right_and_the_reference_ends_boxed(op, digits):
    for p in generate_component(ArithSpec(op, digits, "bare"), 30, seed=1):
        assert str(_bare_value(p.prompt)) == p.answer
        assert int(p.answer) >= 0
        assert p.reference.rstrip().endswith(f"\\boxed{{{p.answer}}}.")
        assert extract_answer(p.reference) == p.answer


def test_division_is_exact_and_story_problems_read_like_the_measured_one():
    for p in generate_component(ArithSpec("div", 2, "bare"), 30):
        a, _, b = _BARE.fullmatch(p.prompt).groups()
        assert int(a) % int(b) == 0
    stories = generate_component(ArithSpec("add", 2, "story"), 60, seed=0)
    assert any(re.fullmatch(r"\w+ has \d+ apples and buys \d+ more\. How many apples does \w+ have now\?", p.prompt)
               for p in stories)
    for p in stories:
        numbers = [int(n) for n in re.findall(r"\d+", p.prompt)]
        assert sum(numbers) == int(p.answer)
        assert p.reference.startswith("Putting the two amounts together")


def test_worked_steps_show_carries_and_borrows():
    add = generate_component(ArithSpec("add", 2), 200)
    assert any("carry 1" in p.reference for p in add)
    sub = generate_component(ArithSpec("sub", 2), 200)
    assert any("borrow 1 from the tens" in p.reference for p in sub)
    mul = generate_component(ArithSpec("mul", 2), 5)
    assert all(p.reference.startswith("Split ") for p in mul)


def test_same_seed_same_problems_and_more_count_extends_the_list():
    a = load_problems("builtin:arith?ops=add&digits=2&count=40&seed=5")
    b = load_problems("builtin:arith", ops=["add"], digits=2, count=40, seed=5)
    longer = load_problems("builtin:arith?ops=add&digits=2&count=80&seed=5")
    assert [p.id for p in a] == [p.id for p in b]
    assert {p.id for p in a} <= {p.id for p in longer}
    other = load_problems("builtin:arith?ops=add&digits=2&count=40&seed=6")
    assert [p.id for p in a] != [p.id for p in other]


def test_ids_are_unique_and_depend_only_on_the_text():
    problems = load_problems("builtin:arith?ops=add,sub,mul,div&wrapper=bare,story&count=400")
    assert len({p.id for p in problems}) == len({p.prompt for p in problems}) == 400
    again = {p.prompt: p.id for p in load_problems("builtin:arith?ops=add&count=400&seed=9")}
    shared = [p for p in problems if p.prompt in again]
    assert shared and all(again[p.prompt] == p.id for p in shared)


def test_default_mix_is_balanced_and_interleaved():
    problems = load_problems("builtin:arith-mix")
    assert len(problems) == ARITH_MIX_COUNT
    counts = Counter(p.source for p in problems)
    assert set(counts) == {f"arith:{spec.key}" for spec in ARITH_MIX}
    assert set(counts.values()) == {ARITH_MIX_COUNT // len(ARITH_MIX)}
    assert len({p.source for p in problems[: len(ARITH_MIX)]}) == len(ARITH_MIX)  # any prefix is mixed


def test_train_and_held_out_never_share_a_problem_across_configs():
    # Train on one arith source, evaluate on the held-out part of another: no text in both.
    mix_train, mix_held = split_problems(load_problems("builtin:arith-mix"), held_out=0.2, seed=0)
    add_train, _ = split_problems(load_problems("builtin:arith?ops=add&wrapper=bare&count=2000&seed=3"),
                                  held_out=0.2, seed=0)
    held_texts = {p.prompt for p in mix_held}
    assert mix_held and held_texts.isdisjoint(p.prompt for p in mix_train)
    assert held_texts.isdisjoint(p.prompt for p in add_train)
    assert {p.prompt for p in add_train} & {p.prompt for p in mix_train}  # the spaces do overlap


def test_max_result_and_exhausted_components():
    small = generate_component(ArithSpec("sub", 2, max_result=9), 50)
    assert all(0 <= int(p.answer) <= 9 for p in small)
    with pytest.raises(UserError, match="too few distinct problems"):
        generate_component(ArithSpec("mul", 1, "bare"), 82)  # only 9 * 9 exist
