"""What one sandboxed job is: the limits it runs under, what it runs, and what the host saw."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field


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
