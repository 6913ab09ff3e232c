"""Judge programs a model wrote by running their tests in the sandbox.

Two test styles:

* `FunctionTests` (HumanEval / MBPP): `check` is the source of `def check(candidate)`. It runs
  in a trusted judge process; the program runs in a separate sandbox and only plain data
  crosses between them (see `code_harness`), so patching builtins, exiting early, or returning
  an always-equal object cannot pass.
* `IOTests` (TACO / LiveCodeBench): each `(stdin, expected_stdout)` case runs the program in a
  fresh sandbox; the host compares the output, so nothing the program does can fake a match.

`check_program` returns a `CodeVerdict` whose status is one of STATUSES; `check_programs` runs
many through a bounded thread pool (each thread waits on sandboxed subprocesses);
`CodeVerifier` plugs the same into the `Verifier` slot. `passed` means every test was observed
to pass; every other status is a failure. `sandbox_error` is the judging machinery's failure,
not the program's: `CodeVerifier` reports it (and any exception while judging) as a
`verifier_error` verdict.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from trajdistill.records import Problem, Verdict
from trajdistill.verify import code_harness
from trajdistill.verify.sandbox import PYTHON, Job, JobResult, Limits, run_job, run_jobs

__all__ = ["STATUSES", "FunctionTests", "IOTests", "CodeVerdict", "Limits", "check_program",
           "check_programs", "extract_code", "outputs_match", "CodeVerifier"]

STATUSES = ("passed", "failed", "timeout", "memory", "runtime_error", "syntax_error",
            "sandbox_error")
_HARNESS_SOURCE = Path(code_harness.__file__).read_text(encoding="utf-8")
# Jobs start Python with -S (no `site`): it halves start-up time and keeps the host's .pth
# hooks out of the sandbox. Programs still see the installed packages through these paths.
_SITE_PACKAGES = json.dumps([p for p in sys.path if p.endswith(("site-packages", "dist-packages"))])
_HARNESS = [PYTHON, "-I", "-S", "/harness/harness.py"]


def _harness_files(**files: str) -> dict[str, str]:
    return {"harness.py": _HARNESS_SOURCE, "site.json": _SITE_PACKAGES, **files}


@dataclass(frozen=True)
class FunctionTests:
    """HumanEval-style tests: `check` defines `check(candidate)`, called with `entry_point`.

    `prelude` is prepended to the program (HumanEval prompts carry imports such as
    `from typing import List` that a chat answer often leaves out).
    """

    entry_point: str
    check: str
    prelude: str = ""

    @classmethod
    def from_asserts(cls, entry_point: str, asserts: Sequence[str], setup: str = "",
                     prelude: str = "") -> FunctionTests:
        """MBPP-style assert list, which names the function directly (`assert f(1) == 2`)."""
        body = "\n".join(textwrap.indent(a.strip(), "    ") for a in asserts if a.strip())
        check = f"{setup.strip()}\n\ndef check(candidate):\n    {entry_point} = candidate\n{body}\n"
        return cls(entry_point=entry_point, check=check.lstrip(), prelude=prelude)


@dataclass(frozen=True)
class IOTests:
    """Standard input / output cases: `[(stdin, expected_stdout), ...]`."""

    cases: tuple[tuple[str, str], ...]

    def __init__(self, cases: Iterable[Sequence[str]]) -> None:
        object.__setattr__(self, "cases", tuple((str(i), str(o)) for i, o in cases))


@dataclass
class CodeVerdict:
    status: str
    detail: str = ""
    tests_run: int = 0  # IO cases or function-test sessions executed
    duration_s: float = 0.0
    stderr: str = field(default="", repr=False)  # tail of the program's stderr, for debugging

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def check_program(program: str, tests, limits: Limits | None = None) -> CodeVerdict:
    """Run `program` against `tests` in the sandbox and say how it went."""
    limits = limits or Limits()
    if isinstance(tests, FunctionTests):
        return _check_function(program, tests, limits)
    if isinstance(tests, IOTests):
        return _check_io(program, tests, limits)
    raise TypeError(f"tests must be FunctionTests or IOTests, not {type(tests).__name__}")


def check_programs(programs_and_tests: Iterable[tuple[str, object]], limits: Limits | None = None,
                   workers: int | None = None) -> list[CodeVerdict]:
    """`check_program` over many programs, at most `workers` (default: CPU count) at a time."""
    items = list(programs_and_tests)
    workers = max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda pt: check_program(pt[0], pt[1], limits), items))


# --- stdin/stdout tests ---------------------------------------------------------------------


def outputs_match(actual: str, expected: str) -> bool:
    """Whitespace-tolerant: same lines without trailing spaces, or failing that, same tokens."""
    a, e = _lines(actual), _lines(expected)
    return a == e or actual.split() == expected.split()


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def _check_io(program: str, tests: IOTests, limits: Limits) -> CodeVerdict:
    if not tests.cases:
        return CodeVerdict("sandbox_error", "no test cases")
    total, n = 0.0, len(tests.cases)
    for i, (stdin, expected) in enumerate(tests.cases, 1):
        job = Job([*_HARNESS, "run"], _harness_files(**{"program.py": program}),
                  stdin=stdin.encode())
        res = run_job(job, limits)
        total += res.duration_s
        verdict = _io_case_verdict(res, i, n, stdin, expected, limits)
        if verdict is not None:
            verdict.tests_run, verdict.duration_s = i, total
            return verdict
    return CodeVerdict("passed", f"{n}/{n} cases", tests_run=n, duration_s=total)


def _io_case_verdict(res: JobResult, i: int, n: int, stdin: str, expected: str,
                     limits: Limits) -> CodeVerdict | None:
    where = f"case {i}/{n}"
    stderr = res.stderr.decode("utf-8", "replace")
    if res.error:
        return CodeVerdict("sandbox_error", res.error)
    if res.timed_out or res.cpu_exceeded:
        kind = "wall" if res.timed_out else "CPU"
        return CodeVerdict("timeout", f"{where}: {kind} time limit exceeded", stderr=stderr[-2000:])
    if res.output_exceeded:
        return CodeVerdict("runtime_error", f"{where}: output limit of {limits.output_bytes} "
                           "bytes exceeded", stderr=stderr[-2000:])
    if res.returncode == code_harness.SYNTAX_ERROR_EXIT and _last_line(stderr).startswith(
            ("SyntaxError", "IndentationError", "TabError", "ValueError")):
        return CodeVerdict("syntax_error", _last_line(stderr), stderr=stderr[-2000:])
    if res.returncode != 0:
        status = "memory" if _last_line(stderr).startswith("MemoryError") else "runtime_error"
        return CodeVerdict(status, f"{where}: exit status {res.returncode}: {_last_line(stderr)}",
                           stderr=stderr[-2000:])
    actual = res.stdout.decode("utf-8", "replace")
    if not outputs_match(actual, expected):
        return CodeVerdict("failed", f"{where}: input {_clip(stdin)} expected {_clip(expected)} "
                           f"got {_clip(actual)}", stderr=stderr[-2000:])
    return None


def _one_line(exc: BaseException) -> str:
    lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:500] if lines else ""


def _clip(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- function tests -------------------------------------------------------------------------


def _check_function(program: str, tests: FunctionTests, limits: Limits) -> CodeVerdict:
    if not tests.check.strip() or not tests.entry_point.isidentifier():
        return CodeVerdict("sandbox_error", "function tests need an entry point and check code")
    if tests.prelude.strip():
        program = f"{tests.prelude.rstrip()}\n\n{program}"
    to_cand_r, to_cand_w = os.pipe()
    to_judge_r, to_judge_w = os.pipe()
    result_r, result_w = os.pipe()
    judge = Job([*_HARNESS, "judge", str(to_judge_r), str(to_cand_w), str(result_w),
                 tests.entry_point],
                _harness_files(**{"check.py": tests.check}),
                pass_fds=(to_judge_r, to_cand_w, result_w), capture_fds=(result_r,))
    candidate = Job([*_HARNESS, "candidate", str(to_cand_r), str(to_judge_w)],
                    _harness_files(**{"program.py": program}),
                    pass_fds=(to_cand_r, to_judge_w))
    judged, ran = run_jobs([judge, candidate], limits)
    verdict = _function_verdict(judged, ran, result_r, limits)
    verdict.tests_run, verdict.duration_s = 1, judged.duration_s
    verdict.stderr = ran.stderr.decode("utf-8", "replace")[-2000:]
    return verdict


def _function_verdict(judged: JobResult, ran: JobResult, result_fd: int,
                      limits: Limits) -> CodeVerdict:
    if judged.error or ran.error:
        return CodeVerdict("sandbox_error", judged.error or ran.error)
    if judged.timed_out:
        return CodeVerdict("timeout", "wall time limit exceeded")
    if ran.output_exceeded:
        return CodeVerdict("runtime_error", f"output limit of {limits.output_bytes} bytes exceeded")
    try:
        report = json.loads(judged.captured.get(result_fd, b"") or b"null")
        status, detail = str(report["status"]), str(report.get("detail", ""))
    except (ValueError, TypeError, KeyError):
        stderr = judged.stderr.decode("utf-8", "replace")
        if judged.cpu_exceeded:
            return CodeVerdict("timeout", "the tests exceeded the CPU time limit")
        return CodeVerdict("sandbox_error", f"judge exited ({judged.returncode}) without a "
                           f"verdict: {_last_line(stderr)}")
    if status not in STATUSES:
        return CodeVerdict("sandbox_error", f"judge reported unknown status {status!r}")
    if status == "passed" and judged.returncode != 0:
        return CodeVerdict("sandbox_error", f"judge exited {judged.returncode} after passing")
    if status in ("runtime_error", "failed") and ran.cpu_exceeded:
        return CodeVerdict("timeout", f"CPU time limit exceeded ({detail})")
    return CodeVerdict(status, detail)


# --- code extraction and the Verifier -------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_LANGS = {"python", "py", "python3", "py3"}
_CODE_HINT = re.compile(r"^(def |class |import |from \w+ import |print\(|for |while |if __name__)",
                        re.MULTILINE)


def extract_code(response: str) -> str | None:
    """The program in a model response, or None.

    Reasoning inside `<think>...</think>` is dropped; then the last ```python block wins, else the
    last untagged block, else the last block of any language; a response with no fence at all is
    taken whole when it looks like Python. An unclosed final fence (cut generation) still counts.
    """
    if "</think>" in response:
        response = response.rsplit("</think>", 1)[1]
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(response)]
    blocks = [(lang, body) for lang, body in blocks if body.strip()]
    for wanted in (lambda lang: lang in _PY_LANGS, lambda lang: lang == "", lambda lang: True):
        chosen = [body for lang, body in blocks if wanted(lang)]
        if chosen:
            return chosen[-1].strip("\n") + "\n"
    if "```" not in response and _CODE_HINT.search(response):
        return response.strip("\n") + "\n"
    return None


class CodeVerifier:
    """`Verifier` for `Problem(kind="code")`: extract the code, run `problem.tests`, judge.

    Statuses: those of `check_program` (STATUSES), except that `sandbox_error` becomes
    `verifier_error`; `no_answer` when the response holds no code.
    """

    def __init__(self, limits: Limits | None = None, workers: int | None = None) -> None:
        self.limits = limits or Limits()
        self.workers = workers

    def check(self, problem: Problem, response: str) -> Verdict:
        code = extract_code(response)
        if code is None:
            return Verdict(passed=False, status="no_answer", detail="no code found in the response")
        if not isinstance(problem.tests, (FunctionTests, IOTests)):
            return Verdict(False, "verifier_error", f"problem {problem.id} has no code tests")
        try:
            verdict = check_program(code, problem.tests, self.limits)
        except Exception as exc:  # the sandbox could not run at all: not the program's doing
            return Verdict(False, "verifier_error", f"sandbox: {_one_line(exc)}")
        if verdict.status == "sandbox_error":
            return Verdict(False, "verifier_error", f"sandbox: {verdict.detail}")
        return Verdict(passed=verdict.passed, status=verdict.status, detail=verdict.detail)

    def check_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        """`check` over many pairs through the bounded pool."""
        workers = max(1, self.workers or os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.check, problems, responses))
