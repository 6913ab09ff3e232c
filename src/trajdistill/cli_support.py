"""What every command shares: one-line user errors, plain output, quiet libraries."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sys
import warnings

import typer

from trajdistill import RunWarning, UserError
from trajdistill.files import TornTailWarning


Plugins = typer.Option(None, "--plugin", "-p", help="Import a module first (package.module or a .py file) that "
                       "registers methods, sampler backends or verifiers (repeatable; or a `plugins:` list in "
                       "the config).")
"""`--plugin`, shared by every command that reads a config (train, eval, traces generate)."""


def one_line(message: object) -> str:
    """A message folded onto one line: a caller reading stderr line by line sees all of it."""
    return " ".join(str(message).split())


def user_errors(fn):
    """User mistakes end as one line on stderr and exit code 2, never a traceback.

    trajdistill's own warnings (a skipped cut-off last line, a damaged checkpoint passed over)
    print as one `warning:` line. A full disk is one line too: whatever was being written is named.
    Output is plain (`plain_output`), and in a multi-process run only process 0 prints
    (`quiet_other_processes`).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plain_output(), quiet_other_processes() as main:
            try:
                with warnings.catch_warnings():
                    warnings.showwarning = _one_line_data_warnings(warnings.showwarning)
                    return fn(*args, **kwargs)
            except UserError as err:
                # every process reads the same input, so process 0 says it for all of them
                main.echo(f"error: {one_line(err)}", only_process_0=True)
                raise typer.Exit(2) from None
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                where = f" writing {err.filename}" if err.filename else ""
                main.echo(f"error: no space left on device{where}; free some space and run the command again")
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                main.echo("interrupted (rerun with --resume / the same command to continue)", only_process_0=True)
                raise typer.Exit(130) from None

    return wrapper


# Wide enough that no line of a table or message is ever folded.
PLAIN_WIDTH = 10_000


@contextlib.contextmanager
def plain_output():
    """While a command runs with stderr not a terminal (a log file, a pipe, a batch job), rich must
    not fold lines at 80 columns (a folded table row breaks in two): every rich console of the
    process, made before or during the command, takes its width from COLUMNS when that is set, so
    it is set very wide. On a terminal nothing changes (rich follows the terminal's width)."""
    if _isatty(sys.stderr):
        yield
        return
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(PLAIN_WIDTH)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def process_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when not launched so)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class _Streams:
    """The real stderr of a process whose ordinary output is silenced."""

    def __init__(self, stderr, rank: int):
        self.stderr, self.rank = stderr, rank

    def echo(self, text: str, only_process_0: bool = False) -> None:
        if self.rank == 0:
            typer.echo(text, err=True)
        elif not only_process_0:
            print(f"process {self.rank}: {text}", file=self.stderr, flush=True)


class quiet_other_processes:
    """In a multi-process run only process 0 prints: the other processes' stdout and stderr (rich
    consoles, progress lines, warnings) go nowhere while the command runs. What stops a process
    still reaches the real stderr: a traceback, a full disk. A user error is printed by process 0
    alone (every process reads the same config and data, so they all stop on the same error)."""

    def __init__(self):
        self.rank = process_rank()
        self.saved = None

    def __enter__(self) -> _Streams:
        if self.rank == 0:
            return _Streams(None, 0)
        self.saved = (sys.stdout, sys.stderr)
        self.devnull = open(os.devnull, "w", encoding="utf-8")
        sys.stdout = sys.stderr = self.devnull
        return _Streams(self.saved[1], self.rank)

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            sys.stdout, sys.stderr = self.saved  # a traceback after this reaches the terminal
            self.devnull.close()
            self.saved = None


def _one_line_data_warnings(show_other):
    def show(message, category, *args, **kwargs):
        if issubclass(category, (TornTailWarning, RunWarning)):
            typer.echo(f"warning: {one_line(message)}", err=True)
        else:
            show_other(message, category, *args, **kwargs)

    return show


def quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
