"""The Python API: `trajdistill.train` and `trajdistill.evaluate`, what the `train` and `eval`
commands run, for a script or a notebook.

    import trajdistill

    result = trajdistill.train("configs/demo.yaml", {"optim.steps": 2}, run_dir="runs/try")
    print(result.markdown)        # the before/after table the command prints
    result.table                  # the same table as data: one dict per row
    result.metrics[-1]["loss"]    # metrics.jsonl, one dict per step

    ev = trajdistill.evaluate("runs/try/final", "builtin:arith-mix", k=[1, 4])
    ev.table                      # [{"run": "final", "problems": 64, "greedy": 0.22, "greedy_se": 0.05, ...}]

A config is a preset path, a `RunConfig`, a dict of the YAML tree, or None (the defaults);
`overrides` are `key.sub=value` strings (as `--set`) or a {"key.sub": value} mapping. A method or
sampler backend registered earlier in the same script (`trajdistill.methods.register`,
`trajdistill.rollout.sampler.register_sampler`) is usable by name at once; `plugins` imports
modules that register them (as the CLI's `--plugin`). Mistakes in the input raise
`trajdistill.UserError` with a one-line message naming the field, before any model loads.

Importing this module loads no torch: the heavy libraries load when a run starts.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from trajdistill import UserError
from trajdistill.config import (
    RunConfig,
    apply_overrides,
    check_for_training,
    config_from_tree,
    import_plugins,
    read_yaml_tree,
)

__all__ = ["EvalResult", "TrainResult", "evaluate", "evaluation_problems", "resolve_config", "table_rows", "train",
           "training_config"]

# -- results ------------------------------------------------------------------------------------


def table_rows(summaries: Sequence[dict]) -> list[dict]:
    """The evaluation table as data: one dict per summary (`run`, `problems`, each accuracy column
    as a fraction with its standard error in `<column>_se`, mean response `tokens`), and for two
    summaries of the same problems (before/after) a last `change (paired)` row, as in the Markdown
    table (which shows the same numbers in percent)."""
    from trajdistill.eval.runner import metric_columns, paired_change

    summaries = [s for s in summaries if s]
    if not summaries:
        return []
    cols = metric_columns(summaries[0])
    rows = []
    for s in summaries:
        row: dict[str, Any] = {"run": s["label"], "problems": s["problems"]}
        for col in cols:
            stat = s.get(col) or {}
            row[col], row[f"{col}_se"] = stat.get("mean"), stat.get("se")
        row["tokens"] = s["response_tokens"]["mean"]
        rows.append(row)
    if len(summaries) == 2:
        changes = [paired_change(summaries[0], summaries[1], c) for c in cols]
        if all(c is not None for c in changes):
            row = {"run": "change (paired)", "problems": summaries[0]["problems"]}
            for col, change in zip(cols, changes):
                row[col], row[f"{col}_se"] = change["mean"], change["se"]
            row["tokens"] = summaries[1]["response_tokens"]["mean"] - summaries[0]["response_tokens"]["mean"]
            rows.append(row)
    return rows


@dataclass
class EvalResult:
    """What `evaluate` returns: the summary (`trajdistill.eval.runner.summarise`'s dict: per column
    {"mean", "se"}, `n`, `k`, per-problem results, ...) and where it was written."""

    summary: dict
    out_dir: Path | None = None

    @property
    def label(self) -> str:
        return self.summary["label"]

    @property
    def table(self) -> list[dict]:
        """The one-row table as data (see `table_rows`)."""
        return table_rows([self.summary])

    @property
    def markdown(self) -> str:
        """The table the `eval` command prints."""
        from trajdistill.eval.runner import summary_markdown

        return summary_markdown([self.summary])

    @property
    def files(self) -> dict[str, Path]:
        """`summary` (.json), `table` (.md) and `samples` (every sample with its verdict, .jsonl)."""
        if self.out_dir is None:
            return {}
        base = Path(self.out_dir) / self.label
        return {"summary": base.with_name(f"{self.label}.json"), "table": base.with_name(f"{self.label}.md"),
                "samples": base.with_name(f"{self.label}.samples.jsonl")}


@dataclass
class TrainResult:
    """What `train` returns. In a multi-process run only process 0 has the evaluations and metrics."""

    config: RunConfig
    run_dir: Path
    evaluations: dict[str, dict] = field(default_factory=dict)
    """Held-out evaluation summaries by label: `before` (the starting model) and `after`."""
    metrics: list[dict] = field(default_factory=list)
    """`metrics.jsonl`: one dict per optimisation step (`step`, `loss`, the method's metrics)."""
    finished: bool = True
    """False when `stop_after` ended the run before its last step (`resume=True` continues it)."""

    @property
    def table(self) -> list[dict]:
        """The before/after table as data (see `table_rows`); empty without evaluations."""
        return table_rows([self.evaluations.get("before"), self.evaluations.get("after")])

    @property
    def markdown(self) -> str | None:
        """The before/after table the `train` command prints (None without evaluations)."""
        from trajdistill.eval.runner import summary_markdown

        done = [s for s in (self.evaluations.get("before"), self.evaluations.get("after")) if s]
        return summary_markdown(done) if done else None

    @property
    def final_model(self) -> Path | None:
        """The exported model (a Hugging Face directory, the adapter merged), once the run finished."""
        path = self.run_dir / "final"
        return path if path.is_dir() else None

    @property
    def files(self) -> dict[str, Path]:
        """The run directory's files that exist: config, log, metrics, before_after (table), final."""
        candidates = {"config": "config.yaml", "log": "run.log", "metrics": "metrics.jsonl",
                      "before_after": "eval/before_after.md", "final": "final"}
        return {name: self.run_dir / rel for name, rel in candidates.items() if (self.run_dir / rel).exists()}


# -- configs ------------------------------------------------------------------------------------


def resolve_config(config: Any = None, overrides: Any = None, *, run_dir: str | Path | None = None,
                   plugins: Iterable[str] | None = None) -> RunConfig:
    """The validated `RunConfig` of `config` (preset path, `RunConfig`, YAML tree dict or None for
    the defaults) with `overrides`, `run_dir` as `output_dir`, and `plugins` imported first and
    recorded in the config's `plugins` list. UserError names the field of any mistake."""
    if config is None:
        tree, source = {}, "defaults"
    elif isinstance(config, RunConfig):
        tree, source = config.tree(), "config"
    elif isinstance(config, Mapping):
        tree, source = copy.deepcopy(dict(config)), "config"
    elif isinstance(config, (str, Path)):
        tree, source = read_yaml_tree(Path(config)), str(config)
    else:
        raise UserError(f"config must be a preset path, a RunConfig or a dict, got {type(config).__name__}")
    if isinstance(overrides, Mapping):
        overrides = dict(overrides)
    elif isinstance(overrides, str):
        overrides = [overrides]
    apply_overrides(tree, overrides)
    if run_dir is not None:
        tree["output_dir"] = str(run_dir)
    plugins = list(plugins or [])
    if plugins:
        import_plugins(plugins, "--plugin")
        listed = tree.get("plugins") if isinstance(tree.get("plugins"), list) else []
        tree["plugins"] = list(dict.fromkeys([*listed, *plugins]))
    return config_from_tree(tree, source)


def training_config(config: Any = None, overrides: Any = None, *, run_dir: str | Path | None = None,
                    plugins: Iterable[str] | None = None) -> RunConfig:
    """`resolve_config`, plus what training refuses on top (`trajdistill.config.check_for_training`)."""
    cfg = resolve_config(config, overrides, run_dir=run_dir, plugins=plugins)
    check_for_training(cfg, str(config) if isinstance(config, (str, Path)) else "config")
    return cfg


# -- train --------------------------------------------------------------------------------------


def train(config: Any = None, overrides: Any = None, *, run_dir: str | Path | None = None,
          resume: bool = False, plugins: Iterable[str] | None = None, model=None, tokenizer=None,
          stop_after: int | None = None) -> TrainResult:
    """Train with any registered method; what `trajdistill train` runs.

    Args:
        config: a preset path (`configs/demo.yaml`), a `RunConfig`, a dict of the YAML tree, or
            None for the defaults.
        overrides: `["optim.lr=1e-5", ...]` (values read as YAML, as `--set`) or
            `{"optim.lr": 1e-5, ...}`.
        run_dir: the run directory (overrides the config's `output_dir`).
        resume: continue from the run directory's last checkpoint (the saved config must make the
            same experiment; see `trajdistill.train.resume`).
        plugins: modules to import first (methods, sampler backends, verifiers they register).
        model, tokenizer: an already loaded student and its tokenizer instead of `model.name`.
        stop_after: stop after this many steps (a checkpoint is kept; `resume=True` goes on).

    Returns a `TrainResult`: the run directory, the before/after evaluations (`table`,
    `markdown`), the metrics of every step and the exported model's path.

    Raises `trajdistill.UserError` for a mistake in the input (before any model loads where it can
    be seen then) and `trajdistill.train.loop.RunStopped` when the run stopped early but cleanly
    (a signal, a full disk): its run directory resumes with `resume=True`. The run's `run.log` ends
    with the error that stopped it.
    """
    cfg = training_config(config, overrides, run_dir=run_dir, plugins=plugins)
    from trajdistill.train.run import train_command

    began = time.time()
    summaries = train_command(cfg, resume=resume, model=model, tokenizer=tokenizer, stop_after=stop_after)
    out = Path(cfg.output_dir)
    metrics = []
    if (out / "metrics.jsonl").is_file():
        from trajdistill.files import read_jsonl

        metrics = list(read_jsonl(out / "metrics.jsonl"))
    timing = out / "timing.json"  # written as the run's very last step
    finished = stop_after is None or (timing.is_file() and timing.stat().st_mtime >= began - 1)
    return TrainResult(config=cfg, run_dir=out, evaluations={k: v for k, v in (summaries or {}).items() if v},
                       metrics=metrics, finished=finished)


# -- evaluate -----------------------------------------------------------------------------------


def evaluation_problems(cfg: RunConfig, data: str | Path | None = None, split: str = "held-out",
                        limit: int | None = None) -> list:
    """The problems `evaluate` scores: `data` (default: the config's `data.eval` for the held-out
    split when set, else `data.train`) read with the config's `data.kind` and `data.fields`, the
    `split` of it by `data.held_out` / `data.split_seed`, at most `limit` (None: `data.max_eval`;
    0: all)."""
    from trajdistill.data import load_problems, split_problems

    d = cfg.data
    fields = d.fields or None
    if data is None and split == "held-out" and d.eval:
        data = d.eval  # the held-out set of a run with its own evaluation data, whole
        problems = load_problems(data, fields=fields, kind=d.kind)
    else:
        data = d.train if data is None else data
        problems = load_problems(str(data), fields=fields, kind=d.kind)
        if split != "all":
            train_part, held = split_problems(problems, held_out=d.held_out, seed=d.split_seed)
            problems = held if split == "held-out" else train_part
    limit = d.max_eval if limit is None else limit
    problems = problems[:limit] if limit else problems
    if not problems:
        raise UserError(f"{data}: no problems in the {split} split")
    return problems


def evaluate(model: Any = "smollm2-135m-instruct", data: str | Path | None = None, *, config: Any = None,
             overrides: Any = None, plugins: Iterable[str] | None = None, split: str = "held-out",
             limit: int | None = None, k: Sequence[int] | None = None, temperature: float | None = None,
             top_p: float | None = None, top_k: int | None = None, greedy: bool | None = None,
             max_new_tokens: int | None = None, grading: str | None = None, batch_size: int | None = None,
             out_dir: str | Path | None = "runs/eval", label: str | None = None, tokenizer=None,
             progress: bool = False, before_model_loads: Callable[[], None] | None = None) -> EvalResult:
    """Sample k answers per problem, verify them, and return Avg@k / Pass@k (and greedy accuracy)
    with standard errors; what `trajdistill eval` runs.

    Args:
        model: a builtin name, a model directory (e.g. a run's `final/`), a hub id, or a loaded
            model (then pass its `tokenizer`).
        data: a problem source (`builtin:NAME`, a .jsonl/.parquet file, a saved dataset); None:
            the config's data (`data.eval` for the held-out split when set, else `data.train`).
        config: a preset, `RunConfig` or dict whose `eval`, `data` (`kind`, `fields`, `held_out`,
            `split_seed`, `max_eval`), `prompt` and `sampling` (backend, batch size) sections
            apply; the arguments below override its values. `overrides` and `plugins` as in
            `train`.
        split: `held-out`, `train` or `all` (split by the stable id hash of `data.held_out`).
        limit: at most this many problems (0: all; None: the config's `data.max_eval`).
        k, temperature, top_p, top_k, greedy, max_new_tokens: the `eval` section's fields
            (None: the config's value).
        grading: math grading, `strict` or `lenient` (None: the config's `eval.grading`).
        batch_size: sequences decoded together (None: the config's `sampling.batch_size`).
        out_dir: where `<label>.json`, `<label>.md` and `<label>.samples.jsonl` go (None: nowhere).
        label: the row's name (default: the model directory's name).
        progress: show a progress bar while sampling.
        before_model_loads: called once the inputs are checked, before torch and the model load
            (the CLI quiets the libraries' logging there).

    Returns an `EvalResult` (`table`: the table as data; `markdown`; `summary`; `files`).
    Raises `trajdistill.UserError` naming the bad argument, field or data line, before the model
    loads.
    """
    from pydantic import ValidationError

    from trajdistill.config import EvalSpec, format_validation_error

    if split not in ("held-out", "train", "all"):
        raise UserError(f"--split must be held-out, train or all, got '{split}'")
    if k is not None and any(value < 1 for value in k):
        raise UserError(f"--k values must be at least 1, got {list(k)}")
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be a count of problems (0 for all), got {limit}")
    if grading not in (None, "strict", "lenient"):
        raise UserError(f"--grading must be strict or lenient, got '{grading}'")
    cfg = resolve_config(config, overrides, plugins=plugins)
    # The data is checked before torch and the model load, so a bad file fails in a second.
    problems = evaluation_problems(cfg, data, split, limit)
    given = {"k": list(k) if k else None, "temperature": temperature, "top_p": top_p, "top_k": top_k,
             "greedy": greedy, "max_new_tokens": max_new_tokens, "grading": grading}
    try:
        spec = EvalSpec.model_validate({**cfg.eval.model_dump(), **{n: v for n, v in given.items() if v is not None}})
    except ValidationError as err:
        raise UserError(format_validation_error(err, "eval options")) from None

    if before_model_loads is not None:
        before_model_loads()
    from trajdistill.eval.runner import evaluate as run_evaluation
    from trajdistill.models import load_model, load_tokenizer
    from trajdistill.rollout import sampler_for
    from trajdistill.verify import Verifiers

    if isinstance(model, (str, Path)):
        name = str(model)
        tok = tokenizer or load_tokenizer(name)
        lm = load_model(name)
        label = label or Path(name).name
    else:
        if tokenizer is None:
            raise UserError("evaluate: a loaded model needs its `tokenizer`")
        tok, lm, label = tokenizer, model, label or "model"
    sampler = sampler_for(cfg.sampling, lm, tok, batch_size=batch_size or cfg.sampling.batch_size,
                          progress=progress, packed=cfg.speed.packed_linear)
    verifiers = Verifiers({"math": {"grading": spec.grading}})
    try:
        summary = run_evaluation(sampler, tok, problems, spec, cfg.prompt, verifiers,
                                 out_dir=Path(out_dir) if out_dir is not None else None, label=label)
    finally:
        sampler.close()
    return EvalResult(summary=summary, out_dir=Path(out_dir) if out_dir is not None else None)
