"""Run untrusted programs in a separate, bounded, isolated process.

This module is trajdistill's security boundary: everything a model wrote runs through
`run_jobs`, and nothing else in the package needs to know how. Behind it, `sandbox_job` holds
what a job is (Limits, Job, JobResult), `sandbox_command` builds the command line below, and
`sandbox_process` starts the jobs and watches them.

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

import os
import warnings

from trajdistill.verify.sandbox_command import PYTHON
# Looked up here, not in sandbox_command, so tests can stand in for a host without bubblewrap.
from trajdistill.verify.sandbox_command import bwrap_path as _bwrap_path
from trajdistill.verify.sandbox_job import Job, JobResult, Limits
from trajdistill.verify.sandbox_process import (SANDBOX_UID_BASE, SANDBOX_UID_COUNT, StartedJob, close_fds,
                                                live_sandbox_processes, start_job, watch_jobs)

__all__ = ["PYTHON", "SANDBOX_UID_BASE", "SANDBOX_UID_COUNT", "Job", "JobResult", "Limits",
           "live_sandbox_processes", "run_job", "run_jobs"]


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
            close_fds(job.pass_fds + job.capture_fds)
        msg = ("bubblewrap (bwrap) is not available, so untrusted code is not run; install it "
               "(apt-get install bubblewrap) or set Limits(allow_unsandboxed=True)")
        return [JobResult(returncode=None, error=msg) for _ in jobs]
    started: list[StartedJob] = []
    try:
        for job in jobs:
            started.append(start_job(job, limits, mode))
        watch_jobs(started, limits)
    except OSError as exc:  # cannot fork, out of fds...: the sandbox failed, not the program
        for job in jobs[len(started) + 1:]:  # start_job already closed the failing job's fds
            close_fds(job.pass_fds + job.capture_fds)
        return [JobResult(None, error=f"sandbox failed: {exc!r}") for _ in jobs]
    finally:
        for s in started:
            s.cleanup()
    for s in started:  # bwrap's own failures must not pass for the program's
        if mode == "bwrap" and s.result.returncode == 1 and s.result.stderr.startswith(b"bwrap: "):
            s.result.error = s.result.stderr.decode("utf-8", "replace").splitlines()[0]
    return [s.result for s in started]


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
