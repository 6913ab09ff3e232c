"""What a run tells the person watching it: `run.log` in the run directory, always, and plain
progress lines on stderr when stderr is not a terminal (a log file, a pipe, a batch job), where a
live progress bar would be noise. `run.log` ends with the error that stopped a run, if one did.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


class RunLog:
    """Timestamped plain lines appended to `run.log`; `progress` lines also go to stderr in plain
    mode. A write that fails (a full disk) turns the file off, never the run."""

    def __init__(self, path: Path | None, plain: bool | None = None):
        self.path = Path(path) if path is not None else None
        self.plain = (not sys.stderr.isatty()) if plain is None else plain
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def note(self, text: str) -> None:
        """A line for run.log only."""
        if self.path is None:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        except OSError:
            self.path = None

    def progress(self, text: str) -> None:
        """A progress line: run.log, and stderr unless a live bar shows it."""
        self.note(text)
        if self.plain:
            print(text, file=sys.stderr, flush=True)

    def error(self, err: BaseException) -> None:
        """The error that stopped the run, as the log's last line (the command prints it too)."""
        from trajdistill import UserError

        if isinstance(err, KeyboardInterrupt):
            text = "interrupted"
        elif isinstance(err, UserError):
            text = f"error: {_one_line(err)}"
        else:
            text = f"error: {type(err).__name__}: {_one_line(err)}"
        self.note(text)


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def stderr_console():
    """A rich console on stderr that never folds a line when stderr is not a terminal (a log file or
    a pipe): a folded table row is a broken table. On a terminal it follows the terminal's width."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=not sys.stderr.isatty())


def step_line(metrics: dict, total: int, shown: tuple[tuple[str, str], ...], seconds: float) -> str:
    """`step 3/20 loss 0.4127 kl 0.0913 pass 0.5000 2.4s`: the loss, the method's progress metrics."""
    parts = [f"step {metrics['step']}/{total}"]
    parts += [f"{label} {metrics[key]:.4f}" for label, key in (("loss", "loss"),) + shown
              if isinstance(metrics.get(key), (int, float))]
    return " ".join(parts) + f" {seconds:.1f}s"


def eval_line(label: str, summary: dict | None, seconds: float) -> str:
    """`eval step-10: greedy 41.2 ± 6.1 avg@4 38.0 ± 4.2 ... 12.3s`."""
    from trajdistill.eval.runner import fmt, metric_columns

    if not summary:
        return f"eval {label}: no held-out problems"
    scores = " ".join(f"{column} {fmt(summary.get(column))}" for column in metric_columns(summary))
    return f"eval {label}: {scores} {seconds:.1f}s"
