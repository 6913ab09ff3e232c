"""The `trajdistill` command. Thin: parse, load the config, call one function."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from trajdistill.cli_support import Plugins, one_line, quiet_libraries, user_errors
from trajdistill.traces_cli import traces_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distil reasoning into language models from trajectories.")

app.add_typer(traces_app, name="traces")

Overrides = typer.Option(None, "--set", "-s", help="Override a config field: --set optim.lr=1e-5 (repeatable).")


def _train_help() -> str:
    from trajdistill.methods import method_names

    return (f"Train with any registered method ({', '.join(method_names())}, or one a --plugin registers); "
            "the method's options are the config section named after it.")


@app.command(help=_train_help())
@user_errors
def train(
    config: Path = typer.Argument(..., help="YAML preset (see configs/)."),
    overrides: Optional[list[str]] = Overrides,
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Run directory (overrides output_dir)."),
    plugins: Optional[list[str]] = Plugins,
):
    from trajdistill import api

    # every config error, before any heavy library loads
    cfg = api.training_config(config, list(overrides or []), run_dir=output_dir, plugins=plugins)
    quiet_libraries()
    from trajdistill.train.distributed import finish_process, launched_processes
    from trajdistill.train.loop import RunStopped

    try:
        api.train(cfg, resume=resume)
        if launched_processes() > 1:
            finish_process(0)
    except RunStopped as stopped:
        again = ["trajdistill", "train", str(config), *(f"--plugin={p}" for p in plugins or []),
                 *(f"--set={s}" for s in overrides or []), "-o", cfg.output_dir, "--resume"]
        typer.echo(f"{one_line(stopped)}; resume with: {shlex.join(again)}", err=True)
        raise typer.Exit(stopped.exit_code) from None


@app.command("eval")
@user_errors
def eval_cmd(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Builtin name, directory or hub id."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Problem source (builtin:NAME or a file); "
                                       "default: the config's data (data.eval, else data.train: builtin:arith-mix)."),
    split: str = typer.Option("held-out", help="held-out | train | all (split by stable id hash)."),
    limit: Optional[int] = typer.Option(None, help="At most this many problems (0: all); default: the config's "
                                        "data.max_eval (64)."),
    k: Optional[list[int]] = typer.Option(None, "--k", help="Pass@k values (n = max k samples per problem); "
                                          "default: eval.k (1 and 4)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature of the k samples; default: "
                                                "eval.temperature (0.6, as the TRD and REDI papers)."),
    top_p: Optional[float] = typer.Option(None, help="Top-p of the k samples; default: eval.top_p (0.95)."),
    top_k: Optional[int] = typer.Option(None, help="Top-k of the k samples, 0 for none; default: eval.top_k (20)."),
    grading: Optional[str] = typer.Option(None, help="Math grading: strict (last \\boxed{} only, the papers') "
                                          "or lenient; default: the config's eval.grading (strict)."),
    greedy: Optional[bool] = typer.Option(None, "--greedy/--no-greedy", help="Also report greedy accuracy; "
                                          "default: eval.greedy (yes)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Default: eval.max_new_tokens (256)."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences decoded together; default: "
                                             "sampling.batch_size (32)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A preset whose eval, data (kind, fields, "
                                          "split), prompt and sampling settings apply; the options above override it."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Output folder."),
    label: Optional[str] = typer.Option(None, help="Name of this evaluation in tables (default: the model)."),
    overrides: Optional[list[str]] = Overrides,
    plugins: Optional[list[str]] = Plugins,
):
    """Sample k answers per problem, verify them, report Avg@k and Pass@k with standard errors."""
    from trajdistill import api

    # The arguments, the config and the data are checked before torch and the model load (a bad
    # file fails in a second); `api.evaluate` loads them in that order.
    result = api.evaluate(model, data, config=config, overrides=list(overrides or []), plugins=plugins,
                          split=split, limit=limit, k=k or None, temperature=temperature, top_p=top_p,
                          top_k=top_k, greedy=greedy, max_new_tokens=max_new_tokens, grading=grading,
                          batch_size=batch_size, out_dir=out, label=label, progress=True,
                          before_model_loads=quiet_libraries)
    typer.echo(result.markdown)


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
