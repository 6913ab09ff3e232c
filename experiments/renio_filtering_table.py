"""Table for experiments/renio_filtering.sh: accuracy, length and reflection counts per run.

    .venv/bin/python experiments/renio_filtering_table.py RUN_DIR [RUN_DIR ...]

Rows: base (the first `eval/before.json` found), then each run's `eval/after.json`; plus the
training rollouts' mean length and the share of rollouts kept by the outcome filter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trajdistill.eval.runner import fmt, metric_columns
from trajdistill.files import read_jsonl


def row(name: str, summary: dict, train: dict | None) -> str:
    cols = [fmt(summary.get(c)) for c in metric_columns(summary)]
    tok, refl = summary.get("response_tokens", {}), summary.get("reflections_per_response", {})
    extra = [f"{tok.get('mean', float('nan')):.1f} ± {tok.get('se', float('nan')):.1f}",
             f"{refl.get('mean', float('nan')):.2f} ± {refl.get('se', float('nan')):.2f}",
             f"{summary.get('reflections_per_1k_tokens', float('nan')):.2f}"]
    if train:
        extra += [f"{train['len']:.1f}", f"{100 * train['kept']:.0f}%"]
    else:
        extra += ["-", "-"]
    return f"| {name} | " + " | ".join(cols + extra) + " |"


def training_stats(run: Path) -> dict | None:
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    rows = read_jsonl(path)
    mean = lambda key: sum(r.get(key, 0.0) for r in rows) / max(len(rows), 1)  # noqa: E731
    return {"len": mean("rollout/response_len"), "kept": mean("rollout/kept")}


def main(runs: list[Path]) -> None:
    lines, header = [], None
    for run in runs:
        before = run / "eval" / "before.json"
        if before.exists() and not lines:
            summary = json.loads(before.read_text())
            header = metric_columns(summary)
            lines.append(row("base", summary, None))
    for run in runs:
        after = run / "eval" / "after.json"
        if after.exists():
            summary = json.loads(after.read_text())
            header = header or metric_columns(summary)
            lines.append(row(run.name, summary, training_stats(run)))
    if not header:
        sys.exit("no evaluations found")
    cols = header + ["tokens/response", "reflections/response", "reflections/1k tokens", "train rollout len", "kept"]
    print("| run | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    print("\n".join(lines))


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
