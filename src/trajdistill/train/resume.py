"""What `--resume` may change: the run directory's `config.yaml` is the experiment, and a resumed
run continues that experiment or refuses, naming every field that differs.

Checked before any model loads, so a refused resume costs a second, not a model load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trajdistill import UserError
from trajdistill.config import RunConfig, config_from_tree, move_speed_fields

# Fields a resumed run may change, because they leave the trained weights and the data order as
# they were (or, for optim.steps, only extend them):
# - optim.steps, upwards only: the run goes on for longer. The learning-rate schedule is recomputed
#   for the new total (warm-up and decay stretch), so the steps after the resume point follow the
#   longer schedule, as Hugging Face's Trainer and TRL do when resumed with more steps. With
#   `optim.schedule: constant` (after warm-up) nothing else changes.
# - eval.every, eval.before, eval.after: when held-out evaluation runs, not what it measures.
# - checkpoint.every, checkpoint.keep_last: how often state is saved and how much is kept.
# - output_dir: the run directory may have been moved or is named differently.
# - sampling.batch_size: sequences per generate call of the HF backend; a memory knob.
# - model.device, teacher.device: where the same weights run (another GPU, or CPU).
# Everything else (lr, data, method options, seeds, eval.k ...) makes a different experiment.
RESUMABLE_CHANGES = frozenset({
    "optim.steps", "eval.every", "eval.before", "eval.after", "checkpoint.every", "checkpoint.keep_last",
    "output_dir", "sampling.batch_size", "model.device", "teacher.device",
})


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted names of every leaf of a nested mapping (a list is one leaf)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (old value, new value) for every field that differs."""
    a, b = flatten(old.tree()), flatten(new.tree())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def refused_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The changes a resumed run may not make (fewer steps is one: the run would already be past them)."""
    out = {}
    for name, (before, after) in config_changes(old, new).items():
        if name == "optim.steps" and before is not None and after is not None and after >= before:
            continue
        if name != "optim.steps" and name in RESUMABLE_CHANGES:
            continue
        out[name] = (before, after)
    return out


def saved_config(run_dir: Path) -> RunConfig | None:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the run's saved config ({type(err).__name__}); "
                        "it is needed to check --resume") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: the run's saved config is not a mapping of sections")
    return config_from_tree(move_speed_fields(tree), str(path))


def check_resume(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to resume `run_dir` with a config that makes a different experiment."""
    old = saved_config(run_dir)
    if old is None:
        return
    refused = refused_changes(old, cfg)
    if refused:
        shown = ", ".join(f"{name} {before!r} -> {after!r}" for name, (before, after) in refused.items())
        allowed = ", ".join(sorted(RESUMABLE_CHANGES))
        raise UserError(f"--resume: {run_dir} was trained with a different config: {shown}; "
                        f"resume with the same config (only {allowed} may change, optim.steps only upwards) "
                        "or start a new run directory")
