"""The sandbox holds against hostile programs, and the host is unharmed afterwards.

Each test runs a program that attacks one wall (environment, filesystem, network, processes,
resources) and then checks from the host side that the attack achieved nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import textwrap
import threading
import time
import warnings

import pytest

from trajdistill.verify import sandbox
from trajdistill.verify.sandbox import PYTHON, Job, Limits, run_job, run_jobs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

FAST = Limits(timeout_s=3.0, cpu_s=2, memory_bytes=256 << 20, max_processes=16,
              output_bytes=64 << 10, disk_bytes=8 << 20, file_size_bytes=1 << 20)


def run(code: str, limits: Limits = FAST, stdin: bytes = b""):
    source = textwrap.dedent(code)
    return run_job(Job([PYTHON, "-I", "-S", "/harness/main.py"], {"main.py": source}, stdin=stdin),
                   limits)




def wait_no_sandbox_processes(seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := sandbox.live_sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_an_ordinary_program_runs_and_reads_stdin():
    res = run("print(input()[::-1])", stdin=b"abc\n")
    assert (res.returncode, res.stdout, res.timed_out) == (0, b"cba\n", False)


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("TRAJDISTILL_FAKE_SECRET", "hunter2-canary")
    res = run("""
        import os
        print(dict(os.environ))
        for path in ("/proc/self/environ", "/proc/1/environ"):
            try:
                print(open(path, "rb").read())
            except OSError as exc:
                print("denied", exc)
    """)
    assert res.returncode == 0
    assert b"hunter2-canary" not in res.stdout + res.stderr
    assert b"TRAJDISTILL_FAKE_SECRET" not in res.stdout


def test_files_outside_the_working_directory_cannot_be_written_or_deleted(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("intact")
    res = run(f"""
        import os, shutil
        targets = [{str(canary)!r}, "/proc/1/root{canary}", "/usr/lib/canary-new", "/etc/x",
                   "/harness/main.py", "{os.getcwd()}/escape.txt", "/root/escape.txt"]
        for t in targets:
            for attempt in (lambda: open(t, "w").write("pwned"), lambda: os.remove(t),
                            lambda: shutil.rmtree(os.path.dirname(t))):
                try:
                    attempt()
                    print("ESCAPED", t)
                except OSError:
                    pass
        open("inside.txt", "w").write("fine")  # the working directory is writable
        open("/tmp/inside.txt", "w").write("fine")
        print("done", os.listdir("."))
    """)
    assert b"ESCAPED" not in res.stdout, res.stdout
    assert b"done ['inside.txt']" in res.stdout
    assert canary.read_text() == "intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    assert not os.path.exists(os.path.join(os.getcwd(), "escape.txt"))


def test_no_network_even_to_a_host_listener_on_localhost():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        res = run(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"leak")
                print("CONNECTED")
            except OSError as exc:
                print("blocked", type(exc).__name__)
        """)
        with pytest.raises(socket.timeout):
            server.accept()
    assert res.stdout.startswith(b"blocked"), res.stdout + res.stderr


def test_killing_the_parent_or_everything_hurts_no_one_else():
    """kill(getppid()) and kill(-1) run beside an innocent job, which must still finish."""
    hostile = Job([PYTHON, "-I", "-S", "-c", textwrap.dedent("""
        import os, signal
        for target in (os.getppid(), 1, -1):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError as exc:
                print("refused", target, exc.errno, flush=True)
    """)])
    parent_before = os.getppid()
    innocent = Job([PYTHON, "-I", "-S", "-c", "import time; time.sleep(0.8); print('alive')"])
    results: dict[str, object] = {}
    t = threading.Thread(target=lambda: results.update(innocent=run_job(innocent, FAST)))
    t.start()
    time.sleep(0.2)
    results["hostile"] = run_job(hostile, FAST)
    t.join()
    assert results["innocent"].stdout == b"alive\n"
    assert os.getppid() == parent_before  # the test process lives on, under the same parent


def test_children_left_behind_are_killed():
    before = set(sandbox.live_sandbox_processes())
    res = run("""
        import os, time, subprocess, sys
        if os.fork() == 0:           # a daemon: new session, double fork, ignores SIGHUP/TERM
            os.setsid()
            if os.fork() == 0:
                import signal
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                time.sleep(60)
            os._exit(0)
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("parent leaves")
    """)
    assert b"parent leaves" in res.stdout
    assert not before
    assert wait_no_sandbox_processes() == []


def test_fork_bomb_is_contained():
    start = time.monotonic()
    res = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    assert time.monotonic() - start < FAST.timeout_s + 2
    assert res.timed_out or res.cpu_exceeded or res.returncode != 0
    assert wait_no_sandbox_processes() == []
    assert run("print('still works')").stdout == b"still works\n"


def test_threads_are_limited_like_processes():
    res = run("""
        import threading, time
        started = 0
        try:
            for _ in range(200):
                threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
                started += 1
        except RuntimeError:
            pass
        print(started)
    """)
    assert 0 < int(res.stdout) < FAST.max_processes


def test_busy_threads_hit_the_cpu_limit():
    start = time.monotonic()
    res = run("""
        import threading
        def spin():
            while True:
                pass
        for _ in range(4):
            threading.Thread(target=spin).start()
    """)
    assert res.cpu_exceeded or res.timed_out
    assert time.monotonic() - start < FAST.timeout_s + 2


def test_endless_loop_and_sleep_stop_at_the_limits():
    loop = run("while True: pass", Limits(timeout_s=4, cpu_s=1))
    sleeper = run("import time; time.sleep(60)")
    # On an idle machine the CPU limit (1 s) fires first; under load the wall clock may.
    assert loop.cpu_exceeded or loop.timed_out
    assert loop.duration_s < 4 + 1.5
    assert sleeper.timed_out
    assert sleeper.duration_s < FAST.timeout_s + 1.5


def test_memory_hog_gets_memory_error():
    res = run("""
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
    """)
    assert res.returncode == 1 and res.stderr.strip().endswith(b"MemoryError")


def test_huge_output_is_capped_and_stops_the_job():
    start = time.monotonic()
    res = run("""
        import sys
        while True:
            sys.stdout.write("x" * 65536)
            sys.stderr.write("y" * 65536)
    """)
    assert res.output_exceeded
    assert len(res.stdout) <= FAST.output_bytes and len(res.stderr) <= FAST.output_bytes
    assert time.monotonic() - start < 2


def test_file_size_count_and_open_files_are_limited():
    res = run("""
        import os
        try:
            open("big", "wb").write(b"x" * (4 << 20))
            print("big file written")
        except OSError as exc:
            print("big refused", exc.errno)
        written = 0
        try:
            for i in range(100):
                with open(f"/tmp/f{i}", "wb") as f:
                    f.write(b"x" * (512 << 10))
                written += 1
        except OSError as exc:
            print("disk full after", written, exc.errno)
        handles = []
        try:
            for _ in range(1000):
                handles.append(open("/dev/null"))
        except OSError as exc:
            print("open files", len(handles), exc.errno)
    """)
    out = res.stdout.decode()
    assert "big refused 27" in out  # EFBIG from RLIMIT_FSIZE
    assert "disk full after" in out and int(out.split("disk full after ")[1].split()[0]) < 17
    assert int(out.split("open files ")[1].split()[0]) < FAST.open_files


def test_temporary_directories_are_removed():
    pattern = "trajdistill-sandbox-"
    before = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(pattern)}
    run("open('x', 'w').write('data')")
    after = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(pattern)}
    assert after <= before


def test_jobs_talk_only_over_the_pipes_they_are_given():
    r, w = os.pipe()
    writer = Job([PYTHON, "-I", "-S", "-c", f"import os; os.write({w}, b'hello')"], pass_fds=(w,))
    reader_r, reader_w = os.pipe()
    os.write(reader_w, b"")
    os.close(reader_w)
    out, = run_jobs([Job([PYTHON, "-I", "-S", "-c", "print('x')"], pass_fds=(reader_r,))], FAST)
    res, = run_jobs([writer], FAST)
    assert os.read(r, 100) == b"hello"
    os.close(r)
    assert res.returncode == 0 and out.stdout == b"x\n"


def test_without_bubblewrap_untrusted_code_is_refused(monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap_path", lambda: None)
    monkeypatch.delenv("TRAJDISTILL_ALLOW_UNSANDBOXED", raising=False)
    res = run("print('ran')")
    assert res.returncode is None and "bubblewrap" in res.error and res.stdout == b""


def test_unsandboxed_fallback_needs_opt_in_and_warns(monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap_path", lambda: None)
    monkeypatch.setattr(sandbox, "_warned_fallback", False)
    monkeypatch.setenv("TRAJDISTILL_FAKE_SECRET", "hunter2-canary")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run("import os; print(sorted(os.environ))", Limits(timeout_s=3, allow_unsandboxed=True))
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
    # Python itself may add LC_CTYPE (locale coercion); nothing comes from the host.
    assert res.returncode == 0 and res.stdout in (b"[]\n", b"['LC_CTYPE']\n")
