"""The command line one sandboxed job runs under: bwrap, then prlimit, then setpriv.

Builds the argv (namespaces and mounts for bubblewrap, rlimits for prlimit, the uid and capability
drop for setpriv) and probes once per process whether bubblewrap can create namespaces here.
Nothing is started here; `sandbox_process` starts and watches the job.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

from trajdistill.verify.sandbox_job import Limits

PYTHON = sys.executable  # the interpreter jobs run; its installation is mounted read-only


@functools.lru_cache(maxsize=1)
def bwrap_path() -> str | None:
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


def bwrap_command(argv: list[str], staging: str, limits: Limits, uid: int | None) -> list[str]:
    cmd = [bwrap_path() or "bwrap",
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
    return cmd + limit_command(limits) + drop_privileges(uid) + argv


def limit_command(limits: Limits) -> list[str]:
    nproc = limits.max_processes
    if os.geteuid() != 0:
        # Without root there is no private uid: the limit counts all of this user's processes.
        nproc += _count_processes_of(os.getuid())
    return ["/usr/bin/prlimit", f"--as={limits.memory_bytes}", f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
            f"--nproc={nproc}", f"--fsize={limits.file_size_bytes}",
            f"--nofile={limits.open_files}", "--core=0", "--"]


def drop_privileges(uid: int | None) -> list[str]:
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
