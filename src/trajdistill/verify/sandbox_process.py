"""Starting sandboxed jobs and watching them until the run ends.

`start_job` stages a job's files, picks its private uid and launches its command (from
`sandbox_command`); `watch_jobs` feeds stdin, captures capped output and enforces the deadline;
`StartedJob.cleanup` kills whatever is left, reaps it and removes the staging directory.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from trajdistill.verify.sandbox_command import bwrap_command, drop_privileges, limit_command
from trajdistill.verify.sandbox_job import Job, JobResult, Limits

SANDBOX_UID_BASE = 61000  # private uids handed to jobs; no account on a normal host uses them
SANDBOX_UID_COUNT = 4000
_READ_CHUNK = 65536


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


@dataclass
class StartedJob:
    """A launched job: its process, staging directory, uid, open streams and the result so far."""

    proc: subprocess.Popen
    staging: str
    uid: int | None
    streams: dict[int, str]  # host fd -> stream name ("stdout", "stderr" or "fd<N>")
    result: JobResult
    capture_fds: tuple[int, ...] = ()
    stdin_left: bytes = b""
    pidfd: int | None = None  # readable once the job exits: wakes `watch_jobs` at once
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
        close_fds(self.capture_fds)  # stdout/stderr were closed with their file objects
        self.capture_fds = ()
        if self.pidfd is not None:
            close_fds((self.pidfd,))
            self.pidfd = None
        self.result.returncode = self.proc.returncode
        self.result.duration_s = time.monotonic() - self.start
        if self.uid is not None:
            _UIDS.release(self.uid)
        shutil.rmtree(self.staging, ignore_errors=True)


def start_job(job: Job, limits: Limits, mode: str) -> StartedJob:
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
            argv, cwd = bwrap_command(job.argv, staging, limits, uid), "/"
        else:
            workdir = os.path.join(staging, "work")
            os.mkdir(workdir)
            if uid is not None:
                os.chown(workdir, uid, uid)
            argv = [*limit_command(limits), *drop_privileges(uid), *job.argv]
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
        close_fds(job.pass_fds + job.capture_fds)
        raise
    close_fds(job.pass_fds)  # the job owns them now; keeping them would hide its EOFs
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    streams.update({fd: f"fd{fd}" for fd in job.capture_fds})
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # Linux < 5.3: `watch_jobs` falls back to polling
        pidfd = None
    return StartedJob(proc, staging, uid, streams, JobResult(returncode=None),
                      capture_fds=job.capture_fds, stdin_left=job.stdin, pidfd=pidfd)


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


def close_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# --- watching running jobs ------------------------------------------------------------------


def watch_jobs(started: list[StartedJob], limits: Limits) -> None:
    """Feed stdin, capture capped output, enforce the deadline; return when the run is over."""
    deadline = time.monotonic() + limits.timeout_s
    sel = selectors.DefaultSelector()
    buffers: dict[int, bytearray] = {}
    owner: dict[int, StartedJob] = {}
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


def _feed_stdin(sel: selectors.BaseSelector, s: StartedJob) -> None:
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
