"""What every command shares: one-line user errors and quiet libraries."""

from __future__ import annotations

import functools
import logging
import os

import typer

from trajdistill import UserError


def user_errors(fn):
    """User mistakes end as one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted (rerun with --resume / the same command to continue)", err=True)
            raise typer.Exit(130) from None

    return wrapper


def quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
