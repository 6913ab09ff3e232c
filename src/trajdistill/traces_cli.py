"""`trajdistill traces ...`: build the offline data sets of REDI / DPO / SimPO / SFT.

    trajdistill traces generate CONFIG --out DIR    sample + verify n teacher traces per problem
    trajdistill traces pairs DIR_OR_FILE --out DIR  first correct / first incorrect pairs + SFT set
    trajdistill traces import FILE --out DIR        OpenR1-Math-Raw-shaped data -> trace rows

Each command is a plain function (`generate_command`, `pairs_command`, `import_command`) that
scripts can call; the typer sub-app `traces_app` wraps them for the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trajdistill import UserError
from trajdistill.cli_support import Plugins, quiet_libraries, user_errors
from trajdistill.config import RunConfig
from trajdistill.files import atomic_write_json

traces_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Teacher traces -> labelled trace sets -> preference pairs / SFT sets.")


# ---------------------------------------------------------------------------------------------
# Plain functions


def generate_command(cfg: RunConfig, out: str | Path, *, teacher: str | None = None, max_problems: int | None = None,
                     problems_per_chunk: int = 8, model=None, tokenizer=None, verify=None) -> dict:
    """Traces of the train split of `cfg.data` from `teacher` (default: cfg.teacher, else cfg.model).

    Sampling settings come from `cfg.sampling` (n, temperature, top_p, top_k, max_new_tokens,
    batch_size), prompts from `cfg.prompt`, the teacher's context from `cfg.traces.context`.
    `model` / `tokenizer` / `verify` may be injected (tests).
    """
    from rich.console import Console

    from trajdistill.data.traces import TraceSettings, generate_traces, trace_summary
    from trajdistill.models import load_model, load_tokenizer, resolve_device
    from trajdistill.rollout import sampler_for
    from trajdistill.train.run import load_run_problems, make_verifiers

    console = Console(stderr=True)
    spec = cfg.teacher or cfg.model
    name = teacher or spec.name
    problems = load_run_problems(cfg).train  # never the held-out problems
    if max_problems is not None:
        problems = problems[:max_problems]
    if tokenizer is None:
        tokenizer = load_tokenizer(name, trust_remote_code=spec.trust_remote_code)
    if model is None:
        device = resolve_device(spec.device)
        model = load_model(name, dtype=spec.dtype, device=str(device), trust_remote_code=spec.trust_remote_code)
    s, p = cfg.sampling, cfg.prompt
    settings = TraceSettings(teacher=str(name), context=cfg.traces.context, n=s.n, temperature=s.temperature,
                             top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens,
                             instruction=p.instruction, system=p.system, privileged=p.privileged, seed=cfg.seed)
    sampler = sampler_for(s, model, tokenizer, packed=cfg.speed.packed_linear)
    console.print(f"traces: {len(problems)} problems x {s.n} from {name} ({settings.context} context) -> {out}")
    try:
        rows = generate_traces(problems, sampler, tokenizer, verify or make_verifiers(cfg), out, settings,
                               problems_per_chunk=problems_per_chunk,
                               progress=lambda done, total: console.print(f"  {done}/{total} problems"))
    finally:
        sampler.close()
    summary = trace_summary(rows)
    console.print(f"traces: {summary}")
    return summary


def pairs_command(traces: str | Path, out: str | Path, *, max_prompt_tokens: int | None = None,
                  max_response_tokens: int | None = None, keep_truncated: bool = False,
                  tokenizer_name: str | None = None, system: str | None = None) -> dict:
    """`pairs.{jsonl,parquet}` (prompt/chosen/rejected) and `sft.{jsonl,parquet}` (prompt/completion).

    With `tokenizer_name` every length is re-measured in that (the student's) tokenizer; otherwise
    the trace set's own `length` / `prompt_length` columns are used.
    """
    from trajdistill.data.traces import TRACE_COLUMNS, PairFilter, build_pairs, fill_lengths, read_rows, write_rows

    rows = read_rows(traces, TRACE_COLUMNS)
    if tokenizer_name:
        from trajdistill.models import load_tokenizer

        for r in rows:
            r["length"] = r["prompt_length"] = None
        fill_lengths(rows, load_tokenizer(tokenizer_name), system)
    pairs, sft, stats = build_pairs(rows, PairFilter(max_prompt_tokens, max_response_tokens,
                                                     drop_truncated=not keep_truncated))
    write_rows(pairs, out, "pairs")
    write_rows(sft, out, "sft")
    atomic_write_json(Path(out) / "pairs_summary.json", stats)
    return stats


def import_command(source: str | Path, out: str | Path, *, fields: dict[str, str | None] | None = None,
                   instruction: str | None = None, tokenizer_name: str | None = None,
                   system: str | None = None) -> dict:
    """Trace rows from an OpenR1-Math-Raw-shaped file: problem, generations[], correctness flags[]."""
    from trajdistill.config import PromptSpec
    from trajdistill.data.traces import GenerationFields, import_generations, read_rows, trace_summary, write_rows

    records = read_rows(source)
    tokenizer = None
    if tokenizer_name:
        from trajdistill.models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_name)
    rows, stats = import_generations(records, GenerationFields.from_mapping(fields),
                                     instruction=PromptSpec().instruction if instruction is None else instruction,
                                     tokenizer=tokenizer, system=system, source=Path(source).stem)
    write_rows(rows, out, "traces")
    summary = {**stats, **trace_summary(rows)}
    atomic_write_json(Path(out) / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# CLI


def _mapping(items: list[str] | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--field '{item}' must look like key=column (column 'none' ignores the key)")
        key, column = item.split("=", 1)
        out[key.strip()] = None if column.strip().lower() == "none" else column.strip()
    return out


@traces_app.command("generate")
@user_errors
def generate_cli(
    config: Path = typer.Argument(..., help="YAML preset: data, sampling, prompt, traces.context, model/teacher."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (rerun with the same one to resume)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a config field (repeatable)."),
    teacher: Optional[str] = typer.Option(None, help="Teacher model (default: config teacher, else model)."),
    max_problems: Optional[int] = typer.Option(None, help="Use only the first N training problems."),
    problems_per_chunk: int = typer.Option(8, help="Problems per atomically written chunk."),
    plugins: Optional[list[str]] = Plugins,
):
    """Sample n traces per training problem from a teacher, verify them, write traces.{jsonl,parquet}."""
    from trajdistill.config import load_config

    cfg = load_config(config, list(overrides or []), plugins=plugins)  # a plugin's sampler backend, say
    quiet_libraries()
    generate_command(cfg, out, teacher=teacher, max_problems=max_problems, problems_per_chunk=problems_per_chunk)


@traces_app.command("pairs")
@user_errors
def pairs_cli(
    traces: Path = typer.Argument(..., help="Trace set: a `traces generate/import` folder or a .jsonl/.parquet."),
    out: Path = typer.Option(..., "--out", "-o"),
    max_prompt_tokens: Optional[int] = typer.Option(None, help="Drop traces whose templated prompt is longer."),
    max_response_tokens: Optional[int] = typer.Option(None, help="Drop traces whose response is longer."),
    keep_truncated: bool = typer.Option(False, help="Keep traces cut at max_new_tokens (dropped by default)."),
    tokenizer: Optional[str] = typer.Option(None, help="Re-measure lengths with this (student) tokenizer."),
):
    """First correct + first incorrect trace per problem -> pairs; every correct trace -> SFT set."""
    quiet_libraries()
    stats = pairs_command(traces, out, max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens,
                          keep_truncated=keep_truncated, tokenizer_name=tokenizer)
    typer.echo(stats)


@traces_app.command("import")
@user_errors
def import_cli(
    source: Path = typer.Argument(..., help=".jsonl / .parquet / saved datasets directory."),
    out: Path = typer.Option(..., "--out", "-o"),
    field: Optional[list[str]] = typer.Option(None, "--field", "-f",
                                              help="key=column for prompt, generations, correct, id, answer "
                                                   "(OpenR1-Math-Raw names by default)."),
    instruction: Optional[str] = typer.Option(None, help="Appended to each problem (default: prompt.instruction)."),
    tokenizer: Optional[str] = typer.Option(None, help="Measure lengths with this (student) tokenizer."),
):
    """Import an external trace set (problem, generations list, per-generation correctness list)."""
    quiet_libraries()
    typer.echo(import_command(source, out, fields=_mapping(field), instruction=instruction, tokenizer_name=tokenizer))
