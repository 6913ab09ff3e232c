"""The `trajdistill` command. Thin: parse, load the config, call one function."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from trajdistill import UserError
from trajdistill.cli_support import one_line, quiet_libraries, user_errors
from trajdistill.traces_cli import traces_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distil reasoning into language models from trajectories.")

app.add_typer(traces_app, name="traces")

Overrides = typer.Option(None, "--set", "-s", help="Override a config field: --set optim.lr=1e-5 (repeatable).")


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="YAML preset (see configs/)."),
    overrides: Optional[list[str]] = Overrides,
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Run directory (overrides output_dir)."),
):
    """Train with any method (opd, opsd, trd, renio, topd, sft, redi, dpo, simpo)."""
    from trajdistill.config import load_config

    sets = list(overrides or []) + ([f"output_dir={output_dir}"] if output_dir else [])
    cfg = load_config(config, sets)  # every config error, before any heavy library loads
    quiet_libraries()
    from trajdistill.train.distributed import finish_process, launched_processes
    from trajdistill.train.loop import RunStopped
    from trajdistill.train.run import train_command

    try:
        train_command(cfg, resume=resume)
        if launched_processes() > 1:
            finish_process(0)
    except RunStopped as stopped:
        again = ["trajdistill", "train", str(config), *(f"--set={s}" for s in overrides or []),
                 "-o", cfg.output_dir, "--resume"]
        typer.echo(f"{one_line(stopped)}; resume with: {shlex.join(again)}", err=True)
        raise typer.Exit(stopped.exit_code) from None


@app.command("eval")
@user_errors
def eval_cmd(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Builtin name, directory or hub id."),
    data: str = typer.Option("builtin:arith-mix", "--data", "-d", help="Problem source (builtin:NAME or a file)."),
    split: str = typer.Option("held-out", help="held-out | train | all (split by stable id hash)."),
    limit: Optional[int] = typer.Option(64, help="At most this many problems (0: all)."),
    k: list[int] = typer.Option([1, 4], "--k", help="Pass@k values (n = max k samples per problem)."),
    temperature: float = typer.Option(0.6, help="Sampling temperature for the k samples (TRD and REDI papers: 0.6)."),
    top_p: float = typer.Option(0.95, help="Top-p of the k samples (TRD and REDI papers: 0.95)."),
    top_k: int = typer.Option(20, help="Top-k of the k samples, 0 for none (TRD and REDI papers: 20)."),
    grading: Optional[str] = typer.Option(None, help="Math grading: strict (last \\boxed{} only, the papers') "
                                          "or lenient; default: the config's eval.grading (strict)."),
    greedy: bool = typer.Option(True, help="Also report greedy accuracy."),
    max_new_tokens: int = typer.Option(256),
    batch_size: int = typer.Option(32),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Take prompt/data/eval settings from a preset."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Output folder."),
    label: Optional[str] = typer.Option(None, help="Name of this evaluation in tables (default: the model)."),
    overrides: Optional[list[str]] = Overrides,
):
    """Sample k answers per problem, verify them, report Avg@k and Pass@k with standard errors."""
    from pydantic import ValidationError

    from trajdistill.config import EvalSpec, format_validation_error, load_config
    from trajdistill.data import load_problems, split_problems

    if split not in ("held-out", "train", "all"):
        raise UserError(f"--split must be held-out, train or all, got '{split}'")
    if any(value < 1 for value in k):
        raise UserError(f"--k values must be at least 1, got {k}")
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be a count of problems (0 for all), got {limit}")
    # The data is checked before torch and the model load, so a bad file fails in a second.
    cfg = load_config(config, list(overrides or []))
    problems = load_problems(data, fields=cfg.data.fields or None)
    if split != "all":
        train_part, held = split_problems(problems, held_out=cfg.data.held_out, seed=cfg.data.split_seed)
        problems = held if split == "held-out" else train_part
    problems = problems[:limit] if limit else problems
    if not problems:
        raise UserError(f"{data}: no problems in the {split} split")
    if grading not in (None, "strict", "lenient"):
        raise UserError(f"--grading must be strict or lenient, got '{grading}'")
    try:
        spec = EvalSpec(k=k, temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy,
                        max_new_tokens=max_new_tokens)
    except ValidationError as err:
        raise UserError(format_validation_error(err, "eval options")) from None

    quiet_libraries()
    from trajdistill.eval.runner import evaluate, summary_markdown
    from trajdistill.models import load_model, load_tokenizer
    from trajdistill.rollout import sampler_for
    from trajdistill.verify import Verifiers

    tok = load_tokenizer(model)
    lm = load_model(model)
    sampler = sampler_for(cfg.sampling, lm, tok, batch_size=batch_size, progress=True,
                          packed=cfg.model.packed_linear)
    verifiers = Verifiers({"math": {"grading": grading or cfg.eval.grading}})
    try:
        summary = evaluate(sampler, tok, problems, spec, cfg.prompt, verifiers, out_dir=out,
                           label=label or Path(model).name)
    finally:
        sampler.close()
    typer.echo(summary_markdown([summary]))


@app.command()
@user_errors
def report(
    runs: list[Path] = typer.Argument(..., help="Run directories to compare."),
    out: Path = typer.Option(Path("runs/report"), "--out", "-o", help="Folder for report.md/.html and plots."),
    title: str = typer.Option("trajdistill report", help="Page title."),
):
    """Compare runs: config differences, held-out Avg@k / Pass@k table, training curves."""
    from trajdistill.report import build_report

    path = build_report(runs, out, title)
    typer.echo(path.read_text())
    typer.echo(f"written: {path} and {path.with_suffix('.html')}", err=True)


def main() -> None:  # pragma: no cover - console entry for `python -m trajdistill`
    app(prog_name="trajdistill")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
