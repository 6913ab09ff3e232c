"""Run untrusted programs in a separate, bounded, isolated process.

This module is trajdistill's security boundary: everything a model wrote runs through
`run_jobs`, and nothing else in the package needs to know how.

How one job runs (Linux, host running as root, bubblewrap installed):

    bwrap (new PID/net/IPC/UTS/cgroup namespaces, read-only system dirs, private tmpfs
      │    working dir and /tmp, no environment, dies with its parent)
      └─ prlimit (address space, CPU seconds, processes+threads, file size, open files, no core)
          └─ setpriv (switch to a private uid that no other live job uses, drop every
              │        capability, no_new_privs)
              └─ python -I -S /harness/<script>

* Wall time: the host kills the job at its deadline. CPU time: RLIMIT_CPU (SIGXCPU, then
  SIGKILL one second later). Memory: RLIMIT_AS per process. Processes and threads:
  RLIMIT_NPROC, which holds because every job runs under its own uid (root ignores it).
  Files: RLIMIT_FSIZE per file, the writable tmpfs mounts are `disk_bytes` each, RLIMIT_NOFILE.
* Filesystem: only /usr, a few /etc files, the Python installation and the job's files
  (read-only, at /harness) are visible. The working directory /sandbox and /tmp are fresh
  tmpfs mounts that vanish with the namespace; the host staging directory is deleted.
* Network: a fresh network namespace has no interfaces but a down loopback, so nothing on the
  host (not even 127.0.0.1) is reachable.
* Secrets: the environment is cleared (`--clearenv`, and bwrap itself gets an empty env).
* Processes: the program is in its own PID namespace whose init is bwrap; killing bwrap
  (which the host always does at the end) makes the kernel kill every process inside, so
  nothing is left behind, whatever it forked, setsid()ed or double-forked.
* Output: each captured stream is capped at `output_bytes`; going over stops the job.

Where bubblewrap is missing, or installed but unable to create namespaces (probed once per
process), this module refuses to run untrusted code and every job
returns `sandbox_error`, unless `Limits.allow_unsandboxed=True` (or the environment variable
TRAJDISTILL_ALLOW_UNSANDBOXED=1) explicitly accepts a weaker fallback: the same rlimits and
private uid (when root), a scrubbed environment and a host temp working directory, but no
filesystem or network isolation and no PID namespace (children that setsid() can outlive the
job). The fallback emits a RuntimeWarning once per process. Refusing is the default because
rlimits alone do not stop a program from reading host files or talking to the network.

Not root: there is no private uid, so RLIMIT_NPROC is set to the user's current process count
plus `max_processes` (racy, but still a bound) and bwrap runs unprivileged with a user
namespace.

Known limits: memory is bounded per process (max_processes x memory_bytes in total), not
per job, because cgroups are not used; file *count* in the tmpfs mounts is bounded only by
their byte size and the wall time; a kernel exploit escapes any namespace sandbox.
"""

from __future__ import annotations

import functools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field

SANDBOX_UID_BASE = 61000  # private uids handed to jobs; no account on a normal host uses them
SANDBOX_UID_COUNT = 4000
_READ_CHUNK = 65536


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed job (every process inside it gets the rlimits)."""

    timeout_s: float = 10.0  # wall clock of one job (one IO case; one function-test session)
    cpu_s: int = 10  # RLIMIT_CPU per process, seconds
    memory_bytes: int = 1 << 30  # RLIMIT_AS per process
    max_processes: int = 8  # RLIMIT_NPROC: processes + threads of the job's private uid
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file the job may write
    disk_bytes: int = 64 << 20  # size of each writable tmpfs (/sandbox and /tmp)
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # cap on each captured stream; going over stops the job
    allow_unsandboxed: bool = False  # accept the weak rlimit-only fallback without bwrap

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.cpu_s <= 0:
            raise ValueError("timeout_s and cpu_s must be positive")
        if min(self.memory_bytes, self.max_processes, self.file_size_bytes, self.disk_bytes,
               self.open_files, self.output_bytes) <= 0:
            raise ValueError("every limit must be positive")


@dataclass
class Job:
    """One program to run: `argv` inside the sandbox, `files` placed read-only in /harness."""

    argv: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)
    stdin: bytes = b""
    pass_fds: tuple[int, ...] = ()  # host fds handed to the job; the host closes its copies
    capture_fds: tuple[int, ...] = ()  # host read ends to capture like stdout (e.g. a result pipe)


@dataclass
class JobResult:
    """What the host observed. `returncode` is bwrap's: 128+N when the program died of signal N."""

    returncode: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    captured: dict[int, bytes] = field(default_factory=dict)
    timed_out: bool = False  # the host's wall-clock deadline fired
    output_exceeded: bool = False  # some stream went over Limits.output_bytes
    error: str = ""  # the sandbox itself failed (not the program)
    duration_s: float = 0.0

    @property
    def cpu_exceeded(self) -> bool:
        """Killed by SIGXCPU, or by SIGKILL, which only RLIMIT_CPU's hard limit sends here.

        A program can fake these exit codes with sys.exit(152); that only earns it a timeout.
        """
        # Negative codes are bwrap itself dying: that is the host killing the job, not RLIMIT_CPU.
        return self.returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL) and not self.timed_out


PYTHON = sys.executable  # the interpreter jobs run; its installation is mounted read-only


def run_job(job: Job, limits: Limits) -> JobResult:
    return run_jobs([job], limits)[0]


def run_jobs(jobs: list[Job], limits: Limits) -> list[JobResult]:
    """Run cooperating jobs side by side under one wall-clock deadline.

    Jobs may talk over pipes the caller created and listed in `pass_fds`. The run ends when
    the first job exits (the others are then killed), at the deadline, or when a stream
    overflows. Every job is killed and every temp directory removed before this returns.
    """
    mode = _isolation_mode(limits)
    if mode == "refuse":
        for job in jobs:
            _close_fds(job.pass_fds + job.capture_fds)
        msg = ("bubblewrap (bwrap) is not available, so untrusted code is not run; install it "
               "(apt-get install bubblewrap) or set Limits(allow_unsandboxed=True)")
        return [JobResult(returncode=None, error=msg) for _ in jobs]
    started: list[_Started] = []
    try:
        for job in jobs:
            started.append(_start(job, limits, mode))
        _monitor(started, limits)
    except OSError as exc:  # cannot fork, out of fds...: the sandbox failed, not the program
        for job in jobs[len(started) + 1:]:  # _start already closed the failing job's fds
            _close_fds(job.pass_fds + job.capture_fds)
        return [JobResult(None, error=f"sandbox failed: {exc!r}") for _ in jobs]
    finally:
        for s in started:
            s.cleanup()
    for s in started:  # bwrap's own failures must not pass for the program's
        if mode == "bwrap" and s.result.returncode == 1 and s.result.stderr.startswith(b"bwrap: "):
            s.result.error = s.result.stderr.decode("utf-8", "replace").splitlines()[0]
    return [s.result for s in started]


# --- starting a job -------------------------------------------------------------------------


class _UidPool:
    """Hands each live job a uid no other live job has, so RLIMIT_NPROC is per job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[int] = set()
        self._next = 0

    def acquire(self) -> int:
        with self._lock:
            for _ in range(SANDBOX_UID_COUNT):
                uid = SANDBOX_UID_BASE + self._next
                self._next = (self._next + 1) % SANDBOX_UID_COUNT
                if uid not in self._busy:
                    self._busy.add(uid)
                    return uid
        raise OSError("no free sandbox uid")

    def release(self, uid: int) -> None:
        with self._lock:
            self._busy.discard(uid)


_UIDS = _UidPool()
_warned_fallback = False


def _isolation_mode(limits: Limits) -> str:
    global _warned_fallback
    if _bwrap_path():
        return "bwrap"
    allowed = limits.allow_unsandboxed or os.environ.get("TRAJDISTILL_ALLOW_UNSANDBOXED") == "1"
    if not allowed:
        return "refuse"
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn("bubblewrap not found: running untrusted code with rlimits only (no "
                      "filesystem, network or PID isolation)", RuntimeWarning, stacklevel=3)
    return "rlimits"


@functools.lru_cache(maxsize=1)
def _bwrap_path() -> str | None:
    """bwrap, if installed *and* able to create the namespaces here (some containers forbid it)."""
    path = shutil.which("bwrap")
    if path is None:
        return None
    probe = [path, "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--", "/bin/true"]
    try:
        ok = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, env={},
                            timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return path if ok else None


@dataclass
class _Started:
    proc: subprocess.Popen
    staging: str
    uid: int | None
    streams: dict[int, str]  # host fd -> stream name ("stdout", "stderr" or "fd<N>")
    result: JobResult
    capture_fds: tuple[int, ...] = ()
    stdin_left: bytes = b""
    pidfd: int | None = None  # readable once the job exits: wakes the monitor at once
    start: float = field(default_factory=time.monotonic)

    def exited(self) -> bool:
        """Has the job exited? Does not reap, so its pid (and process group) stay reserved."""
        if self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def cleanup(self) -> None:
        if self.proc.returncode is None:
            # bwrap is still unreaped here, so its pid and group id cannot have been reused.
            for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
                try:
                    kill()
                except (ProcessLookupError, PermissionError):
                    pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass
        _close_fds(self.capture_fds)  # stdout/stderr were closed with their file objects
        self.capture_fds = ()
        if self.pidfd is not None:
            _close_fds((self.pidfd,))
            self.pidfd = None
        self.result.returncode = self.proc.returncode
        self.result.duration_s = time.monotonic() - self.start
        if self.uid is not None:
            _UIDS.release(self.uid)
        shutil.rmtree(self.staging, ignore_errors=True)


def _start(job: Job, limits: Limits, mode: str) -> _Started:
    staging = tempfile.mkdtemp(prefix="trajdistill-sandbox-")
    uid = _UIDS.acquire() if os.geteuid() == 0 else None
    try:
        os.chmod(staging, 0o755)  # the job's private uid must be able to read its files
        for name, content in job.files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"bad job file name {name!r}")
            data = content.encode() if isinstance(content, str) else content
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data)
            os.chmod(os.path.join(staging, name), 0o644)
        if mode == "bwrap":
            argv, cwd = _bwrap_command(job.argv, staging, limits, uid), "/"
        else:
            workdir = os.path.join(staging, "work")
            os.mkdir(workdir)
            if uid is not None:
                os.chown(workdir, uid, uid)
            argv = [*_limit_command(limits), *_drop_privileges(uid), *job.argv]
            argv = [a.replace("/harness/", staging + "/") for a in argv]
            cwd = workdir
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=job.pass_fds, env={}, cwd=cwd, start_new_session=True,
        )
    except BaseException:
        if uid is not None:
            _UIDS.release(uid)
        shutil.rmtree(staging, ignore_errors=True)
        _close_fds(job.pass_fds + job.capture_fds)
        raise
    _close_fds(job.pass_fds)  # the job owns them now; keeping them would hide its EOFs
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    streams.update({fd: f"fd{fd}" for fd in job.capture_fds})
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # Linux < 5.3: the monitor falls back to polling
        pidfd = None
    return _Started(proc, staging, uid, streams, JobResult(returncode=None),
                    capture_fds=job.capture_fds, stdin_left=job.stdin, pidfd=pidfd)


def _bwrap_command(argv: list[str], staging: str, limits: Limits, uid: int | None) -> list[str]:
    cmd = [_bwrap_path() or "bwrap",
           "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
           "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox",
           "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
           "--hostname", "sandbox",
           "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink("/" + link):
            cmd += ["--symlink", os.readlink("/" + link), "/" + link]
        elif os.path.isdir("/" + link):
            cmd += ["--ro-bind", "/" + link, "/" + link]
    for path in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/alternatives"):
        cmd += ["--ro-bind-try", path, path]
    # The private /tmp comes before the Python mounts: a later tmpfs would hide a venv under /tmp.
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(limits.disk_bytes), "--tmpfs", "/tmp",
            "--perms", "0777", "--size", str(limits.disk_bytes), "--tmpfs", "/sandbox"]
    mounts = _python_mounts()
    made: set[str] = {"/tmp", "/sandbox", "/proc", "/dev"}  # exist already, with their own modes
    for mount in mounts:  # bwrap makes missing parents 0700 root: the job's uid could not enter
        parts = mount.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:i])
            if parent not in made and not parent.startswith("/usr"):
                made.add(parent)
                cmd += ["--perms", "0755", "--dir", parent]
    for mount in mounts:
        cmd += ["--ro-bind", mount, mount]
    cmd += ["--ro-bind", staging, "/harness", "--chdir", "/sandbox", "--"]
    return cmd + _limit_command(limits) + _drop_privileges(uid) + argv


def _limit_command(limits: Limits) -> list[str]:
    nproc = limits.max_processes
    if os.geteuid() != 0:
        # Without root there is no private uid: the limit counts all of this user's processes.
        nproc += _count_processes_of(os.getuid())
    return ["/usr/bin/prlimit", f"--as={limits.memory_bytes}", f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
            f"--nproc={nproc}", f"--fsize={limits.file_size_bytes}",
            f"--nofile={limits.open_files}", "--core=0", "--"]


def _drop_privileges(uid: int | None) -> list[str]:
    if uid is None:
        return []
    return ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def _python_mounts() -> list[str]:
    """The Python installation (venv and base prefix), minus anything already under /usr."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.dirname(os.path.realpath(PYTHON)))}
    roots = {os.path.realpath(r) for r in roots} | {r for r in roots}
    roots = {r for r in roots if os.path.isdir(r) and not (r + "/").startswith("/usr/") and r != "/"}
    return sorted(r for r in roots if not any(r != o and r.startswith(o + "/") for o in roots))


def live_sandbox_processes() -> list[int]:
    """PIDs of live processes running under a sandbox uid (there must be none between jobs)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
            except OSError:
                continue
            if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_COUNT:
                found.append(int(entry))
    return found


def _count_processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _close_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# --- watching running jobs ------------------------------------------------------------------


def _monitor(started: list[_Started], limits: Limits) -> None:
    """Feed stdin, capture capped output, enforce the deadline; return when the run is over."""
    deadline = time.monotonic() + limits.timeout_s
    sel = selectors.DefaultSelector()
    buffers: dict[int, bytearray] = {}
    owner: dict[int, _Started] = {}
    try:
        for s in started:
            for fd in s.streams:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ)
                buffers[fd], owner[fd] = bytearray(), s
            if s.pidfd is not None:
                sel.register(s.pidfd, selectors.EVENT_READ)
                owner[s.pidfd] = s
            stdin = s.proc.stdin
            if s.stdin_left:
                os.set_blocking(stdin.fileno(), False)
                sel.register(stdin.fileno(), selectors.EVENT_WRITE)
                owner[stdin.fileno()] = s
            else:
                stdin.close()
        primary = started[0]
        primary_done_at: float | None = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                for s in started:
                    s.result.timed_out = True
                break
            if primary_done_at is None and primary.exited():
                primary_done_at = now
            # Once the primary has exited its namespace is dying; give its pipes a moment to
            # reach EOF, but never wait for what a killed sandbox might still hold open.
            primary_open = any(fd in buffers and owner[fd] is primary for fd in _registered(sel))
            if primary_done_at is not None and (not primary_open or now - primary_done_at > 1.0):
                break
            for key, events in sel.select(timeout=min(0.05, max(0.0, deadline - now))):
                fd = key.fd
                if events & selectors.EVENT_WRITE:
                    _feed_stdin(sel, owner[fd])
                    continue
                if fd == owner[fd].pidfd:  # exited; the loop's next pass sees it
                    sel.unregister(fd)
                    continue
                try:
                    chunk = os.read(fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fd)
                    continue
                buf = buffers[fd]
                room = limits.output_bytes - len(buf)
                buf += chunk[:max(room, 0)]
                if len(chunk) > room:
                    for s in started:
                        s.result.output_exceeded = s is owner[fd] or s.result.output_exceeded
                    raise _StopRun
    except _StopRun:
        pass
    finally:
        sel.close()
        for s in started:
            for fd, name in s.streams.items():
                data = bytes(buffers.get(fd, b""))
                if name == "stdout":
                    s.result.stdout = data
                elif name == "stderr":
                    s.result.stderr = data
                else:
                    s.result.captured[fd] = data


class _StopRun(Exception):
    pass


def _registered(sel: selectors.BaseSelector) -> list[int]:
    return [key.fd for key in sel.get_map().values()]


def _feed_stdin(sel: selectors.BaseSelector, s: _Started) -> None:
    stdin = s.proc.stdin
    try:
        written = os.write(stdin.fileno(), s.stdin_left[:_READ_CHUNK])
        s.stdin_left = s.stdin_left[written:]
    except BlockingIOError:
        return
    except OSError:  # the program closed its stdin or died: it does not want the rest
        s.stdin_left = b""
    if not s.stdin_left:
        sel.unregister(stdin.fileno())
        stdin.close()
