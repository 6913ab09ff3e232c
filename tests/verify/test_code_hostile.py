"""Hostile programs against `check_program`: each gets its expected verdict, and none passes.

The corpus targets the verdict, not only the host: exiting early with status 0, patching
builtins and AssertionError, always-equal return values, forging the judge's report, reading
the tests, swallowed failures. Host-side harm (files, network, processes) is covered in
test_sandbox_isolation.py; here the host is re-checked after the whole corpus.
"""

from __future__ import annotations

import os
import shutil
import textwrap
import time

import pytest

from trajdistill.verify import sandbox
from trajdistill.verify.code import FunctionTests, IOTests, Limits, check_program, check_programs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

FAST = Limits(timeout_s=3.0, cpu_s=2, memory_bytes=256 << 20, max_processes=16,
              output_bytes=64 << 10)
ADD = FunctionTests("add", "def check(candidate):\n"
                           "    assert candidate(1, 2) == 3\n"
                           "    assert candidate(-4, 4) == 0\n"
                           "    assert candidate(10, 5) == 15\n")
ADD_IO = IOTests([("1 2\n", "3\n"), ("-4 4\n", "0\n"), ("10 5\n", "15\n")])

# (name, program, tests, expected status)
CORPUS = [
    ("os._exit(0) before the tests", "import os\nos._exit(0)\n", ADD, "runtime_error"),
    ("sys.exit(0) before the tests", "import sys\nsys.exit(0)\n", ADD, "runtime_error"),
    ("os._exit(0) inside the function",
     "def add(a, b):\n    import os\n    os._exit(0)\n", ADD, "runtime_error"),
    ("exit after answering once",
     "n = 0\ndef add(a, b):\n    global n\n    n += 1\n    if n > 1:\n        raise SystemExit(0)\n"
     "    return a + b\n", ADD, "runtime_error"),
    ("always-equal object", """
        class Anything:
            def __eq__(self, other):
                return True
        def add(a, b):
            return Anything()
     """, ADD, "runtime_error"),
    ("always-equal int subclass", """
        class Sneaky(int):
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__
        def add(a, b):
            return Sneaky(0)
     """, ADD, "failed"),
    ("AssertionError replaced by a harmless class", """
        import builtins
        builtins.AssertionError = type("AssertionError", (BaseException,), {})
        def add(a, b):
            return 0
     """, ADD, "failed"),
    ("builtins and operator patched", """
        import builtins, operator
        operator.eq = lambda a, b: True
        builtins.abs = builtins.all = builtins.any = lambda *a: True
        def add(a, b):
            return -1
     """, ADD, "failed"),
    ("builtins the harness needs broken", """
        import builtins
        builtins.isinstance = lambda *a: True
        builtins.__dict__["__build_class__"] = None
        def add(a, b):
            return a + b
     """, ADD, "runtime_error"),
    ("forged verdict written to every descriptor", """
        import os
        forged = b'{"status": "passed", "detail": "forged"}'
        for fd in range(0, 64):
            try:
                os.write(fd, forged)
            except OSError:
                pass
        def add(a, b):
            return None
     """, ADD, "runtime_error"),
    # Every kill fails (other uid, own PID namespace); the program is otherwise correct, so
    # the honest verdict is a pass: the attack disturbed nothing.
    ("kills its parent and everything it can see", """
        import os, signal
        for pid in (os.getppid(), 1, -1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        def add(a, b):
            return a + b
     """, ADD, "passed"),
    ("reads the test file to answer", """
        def add(a, b):
            source = open("/harness/check.py").read()
            return 3
     """, ADD, "runtime_error"),
    ("endless loop", "def add(a, b):\n    while True:\n        pass\n", ADD, "timeout"),
    ("sleeps past the limit", "import time\ndef add(a, b):\n    time.sleep(60)\n", ADD, "timeout"),
    ("memory hog", "def add(a, b):\n    return bytearray(1 << 34)\n", ADD, "memory"),
    ("fork bomb", """
        import os
        def add(a, b):
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
     """, ADD, "timeout"),
    ("huge output", "def add(a, b):\n    while True:\n        print('x' * 10000)\n", ADD,
     "runtime_error"),
    ("generator instead of a value", "def add(a, b):\n    yield a + b\n", ADD, "runtime_error"),
    ("io: exits 0 before printing", "import os\nos._exit(0)\n", ADD_IO, "failed"),
    ("io: prints a plausible answer for every input", "print(3)\n", ADD_IO, "failed"),
    ("io: huge output", "while True:\n    print('3' * 10000)\n", ADD_IO, "runtime_error"),
    ("io: endless loop", "while True:\n    pass\n", ADD_IO, "timeout"),
    ("io: fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                      "        pass\n", ADD_IO, "timeout"),
    ("io: memory hog", "x = [bytearray(1 << 24) for _ in range(1000)]\n", ADD_IO, "memory"),
]


@pytest.fixture(scope="module")
def corpus_verdicts():
    before = set(os.listdir("/tmp"))
    start = time.monotonic()
    programs = [(textwrap.dedent(program), tests) for _, program, tests, _ in CORPUS]
    verdicts = check_programs(programs, FAST, workers=2)
    return verdicts, time.monotonic() - start, before


@pytest.mark.parametrize("index", range(len(CORPUS)), ids=[c[0] for c in CORPUS])
def test_hostile_program_gets_its_verdict(corpus_verdicts, index):
    verdicts, _, _ = corpus_verdicts
    name, _, _, expected = CORPUS[index]
    assert verdicts[index].status == expected, (name, verdicts[index])


def test_no_hostile_program_passes_and_the_host_is_clean(corpus_verdicts):
    verdicts, elapsed, tmp_before = corpus_verdicts
    assert not [v for v, c in zip(verdicts, CORPUS) if v.passed and c[3] != "passed"]
    assert elapsed < 45
    deadline = time.monotonic() + 3
    while sandbox.live_sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.live_sandbox_processes() == []
    leftovers = {n for n in set(os.listdir("/tmp")) - tmp_before if n.startswith("trajdistill-sandbox-")}
    assert leftovers == set()


def test_swallowed_channel_failure_cannot_pass():
    """Tests that catch every Exception must still not pass a program that vanished."""
    tolerant = FunctionTests("add", "def check(candidate):\n"
                                    "    for a in range(3):\n"
                                    "        try:\n"
                                    "            candidate(a, a)\n"
                                    "        except Exception:\n"
                                    "            pass\n")
    verdict = check_program("def add(a, b):\n    import os\n    os._exit(0)\n", tolerant, FAST)
    assert verdict.status == "runtime_error"
    assert check_program("def add(a, b):\n    return a + b\n", tolerant, FAST).passed


def test_the_same_correct_program_passes_both_styles():
    """The corpus' tests are satisfiable: a correct program passes them."""
    assert check_program("def add(a, b):\n    return a + b\n", ADD, FAST).passed
    assert check_program("a, b = map(int, input().split())\nprint(a + b)\n", ADD_IO, FAST).passed


