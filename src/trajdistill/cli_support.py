"""What every command shares: one-line user errors and quiet libraries."""

from __future__ import annotations

import errno
import functools
import logging
import os
import warnings

import typer

from trajdistill import RunWarning, UserError
from trajdistill.files import TornTailWarning


def one_line(message: object) -> str:
    """A message folded onto one line: a caller reading stderr line by line sees all of it."""
    return " ".join(str(message).split())


def user_errors(fn):
    """User mistakes end as one line on stderr and exit code 2, never a traceback.

    trajdistill's own warnings (a skipped cut-off last line, a damaged checkpoint passed over)
    print as one `warning:` line. A full disk is one line too: whatever was being written is named.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_data_warnings(warnings.showwarning)
                return fn(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            where = f" writing {err.filename}" if err.filename else ""
            typer.echo(f"error: no space left on device{where}; free some space and run the command again",
                       err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted (rerun with --resume / the same command to continue)", err=True)
            raise typer.Exit(130) from None

    return wrapper


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
