"""trajdistill: distil reasoning into language models from trajectories."""

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake in the user's input (config, data file, CLI argument).

    The CLI prints it as one line and exits non-zero, without a traceback.
    """


class RunWarning(UserWarning):
    """Something the user should know that does not stop the command (a damaged checkpoint
    skipped, metrics lines lost). The CLI prints it as one `warning:` line."""
