"""Math answers: extract the final answer from a response, compare it to the gold with math-verify.

Extraction, in its two grading modes (`strict`: the last `\\boxed{}` only; `lenient`: answer
phrases and the last number as fallbacks), lives in `trajdistill.verify.math_answers`; its names
are importable from here too.

Comparison (`verify_math`, `MathVerifier`) uses math-verify's `parse` and `verify` with their
signal-based timeouts disabled: `signal.alarm` only works on the main thread, and a sampler or a
trainer may call the verifier from anywhere. The time limit is enforced instead by running
math-verify in a long-lived worker process (`python -m trajdistill.verify.math`), spoken to over
a pipe; a call that overruns gets the worker killed and a fresh one started on the next call.
Plain integers are compared in-process without the round trip.

A comparison that overruns, or that math-verify (or the worker) fails on, is not a wrong answer:
`MathVerifier.check` reports it as `verifier_timeout` / `verifier_error`.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
from decimal import Decimal, InvalidOperation

from trajdistill import UserError
from trajdistill.records import Problem, Verdict
from trajdistill.verify.math_answers import GRADINGS, Grading, boxed_contents, check_grading, extract_answer

__all__ = ["DEFAULT_TIMEOUT", "GRADINGS", "Grading", "MathVerifier", "VerifierFailure", "as_boxed",
           "boxed_contents", "extract_answer", "math_verify_compare", "verify_math"]

DEFAULT_TIMEOUT = 5.0  # seconds per comparison; sympy simplification of adversarial input can hang
_STARTUP_TIMEOUT = 120.0  # seconds for the worker to import sympy and math-verify
_CACHE_SIZE = 50_000


class VerifierFailure(Exception):
    """math-verify or its worker failed on one comparison; the message is one line."""


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Comparison

_INT_RE = re.compile(r"-?\d+|-?\d{1,3}(?:,\d{3})+")
_DECIMAL_RE = re.compile(r"-?\d+\.\d+|-?\d{1,3}(?:,\d{3})+\.\d+")


def _quick_compare(gold: str, pred: str) -> bool | None:
    """Decide the easy cases without sympy: two integers, or two equal decimals. None: undecided."""
    gold, pred = gold.strip(), pred.strip()
    if _INT_RE.fullmatch(gold) and _INT_RE.fullmatch(pred):
        return int(gold.replace(",", "")) == int(pred.replace(",", ""))
    if (_INT_RE.fullmatch(gold) or _DECIMAL_RE.fullmatch(gold)) and (
        _INT_RE.fullmatch(pred) or _DECIMAL_RE.fullmatch(pred)
    ):
        try:
            if Decimal(gold.replace(",", "")) == Decimal(pred.replace(",", "")):
                return True
        except InvalidOperation:
            pass
    return None  # unequal decimals go to math-verify, whose float rounding we do not duplicate


def as_boxed(answer: str) -> str:
    """Wrap a bare answer so math-verify's LaTeX extractor reads it whole (`$` delimiters dropped)."""
    answer = answer.strip()
    if "\\boxed" in answer or "\\fbox" in answer:
        return answer
    answer = re.sub(r"^\$+|\$+$", "", answer).strip()
    return "\\boxed{" + answer + "}"


def math_verify_compare(gold: str, pred: str) -> bool:
    """math-verify's judgement, with its own (signal based) timeouts off. Runs in the worker."""
    from math_verify import parse, verify

    gold_parsed = parse(as_boxed(gold), parsing_timeout=None)
    pred_parsed = parse(as_boxed(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


class _Worker:
    """A child Python process that answers `{"gold", "pred"}` lines with `{"ok": bool}` lines."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trajdistill.verify.math"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        # Importing sympy and math-verify takes seconds; wait for it here so that the first
        # comparison is not charged for it.
        if self._read_line(_STARTUP_TIMEOUT) != "ready\n":
            self.close()
            raise VerifierFailure("math verification worker failed to start")

    def _read_line(self, timeout: float) -> str | None:
        """The worker's next line ("" at EOF), or None if none arrives within `timeout`."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else None

    def compare(self, gold: str, pred: str, timeout: float) -> bool | None:
        """True/False, or None when the worker overran `timeout` seconds (it is then killed).

        Raises `VerifierFailure` when math-verify raised or the worker died.
        """
        try:
            self.proc.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            self.close()
            raise VerifierFailure(f"math verification worker is gone ({_one_line(exc)})") from None
        line = self._read_line(timeout)
        if line is None:
            self.close()
            return None
        if not line:
            self.close()
            raise VerifierFailure("math verification worker exited unexpectedly")
        reply = json.loads(line)
        if "error" in reply:
            raise VerifierFailure(str(reply["error"]))
        return bool(reply["ok"])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _serve() -> None:
    """Worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # the "timeout disabled" warning
    math_verify_compare("\\frac{1}{2}", "0.5")  # warm up: imports, LaTeX parser construction
    replies = sys.stdout
    sys.stdout = sys.stderr  # a stray print from a library must not corrupt the protocol
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": math_verify_compare(request["gold"], request["pred"])}
        except Exception as exc:  # math-verify raises on exotic input: the caller decides
            reply = {"error": f"math-verify failed: {_one_line(exc)}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


class MathVerifier:
    """Verifier for `kind == "math"` problems: extracted answer vs `problem.answer`.

    `grading` picks the extraction rules (module docstring): "strict" grades only the last
    `\\boxed{}`, "lenient" falls back to answer phrases and the last number.
    Thread-safe: calls share one worker process under a lock. `timeout` (seconds) bounds each
    comparison; `timeout=None` runs math-verify in-process without a limit (debugging only).
    """

    def __init__(self, timeout: float | None = DEFAULT_TIMEOUT, grading: Grading = "strict") -> None:
        check_grading(grading)
        self.timeout = timeout
        self.grading = grading
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], bool] = {}

    def compare(self, gold: str, pred: str) -> bool | None:
        """Is `pred` equivalent to `gold`? None when the comparison timed out.

        Raises `VerifierFailure` when math-verify or its worker failed.
        """
        quick = _quick_compare(gold, pred)
        if quick is not None:
            return quick
        key = (gold, pred)
        if key in self._cache:
            return self._cache[key]
        result = self._compare_slow(gold, pred)
        if result is not None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = result
        return result

    def _compare_slow(self, gold: str, pred: str) -> bool | None:
        if self.timeout is None:
            try:
                return math_verify_compare(gold, pred)
            except Exception as exc:
                raise VerifierFailure(f"math-verify failed: {_one_line(exc)}") from exc
        with self._lock:
            if self._worker is None or not self._worker.alive():
                try:
                    self._worker = _Worker()
                except OSError as exc:  # cannot fork, out of file descriptors...
                    raise VerifierFailure(f"cannot start the math verification worker: "
                                          f"{_one_line(exc)}") from exc
            result = self._worker.compare(gold, pred, self.timeout)
            if result is None:
                self._worker = None  # killed by compare(); the next call starts a fresh one
            return result

    def check(self, problem: Problem, response: str) -> Verdict:
        if problem.answer is None or not str(problem.answer).strip():
            raise UserError(f"problem {problem.id}: no gold answer to verify a math response against")
        answer = extract_answer(response, self.grading)
        if answer is None:
            found = "\\boxed{}" if self.grading == "strict" else "\\boxed{} or final answer"
            return Verdict(False, "no_answer", f"no {found} found ({self.grading} grading)")
        try:
            result = self.compare(str(problem.answer), answer)
        except VerifierFailure as exc:
            return Verdict(False, "verifier_error", f"{exc} (answer {answer[:80]!r})")
        if result is None:
            return Verdict(False, "verifier_timeout",
                           f"comparison exceeded {self.timeout}s: {answer[:80]!r}")
        return Verdict(result, "passed" if result else "failed", f"extracted {answer[:80]!r}")

    def check_many(self, problems, responses) -> list[Verdict]:
        # One worker process serves every comparison; most answers are settled by the quick path.
        return [self.check(p, r) for p, r in zip(problems, responses)]

    __call__ = check

    def close(self) -> None:
        """Stop the worker process (it is also stopped when the interpreter exits)."""
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def verify_math(response: str, gold: str, grading: Grading = "strict") -> bool:
    """Does the final answer of `response` match `gold`?

    A yes/no helper: no answer, a timeout or a verifier failure all read as no. Use
    `MathVerifier.check` to tell them apart.
    """
    global _default
    answer = extract_answer(response, grading)
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
    if answer is None:
        return False
    try:
        return bool(_default.compare(gold, answer))
    except VerifierFailure:
        return False


if __name__ == "__main__":  # the worker process
    _serve()
