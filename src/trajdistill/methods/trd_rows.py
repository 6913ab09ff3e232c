"""TRD's stage-1/2 rows: their statuses, the refinement table (TRD paper, appendix B.1) and their
Parquet files (readable by pandas and `datasets`).

One row per raw rollout y_o: its refinement y_r, both verdicts, the prompts, and why a refinement
cannot be trained on (`refine_status`).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from trajdistill import UserError

STATUSES = ("ok", "empty", "truncated", "bad_format")
JOINT = ("fail_to_pass", "pass_to_fail", "pass_to_pass", "fail_to_fail")

def answer_in_format(text: str, kind: str) -> bool:
    """The answer format the refinement prompt asks for: a `\\boxed{}` (math), code (code)."""
    if kind == "code":
        from trajdistill.verify.code import extract_code

        return extract_code(text) is not None
    from trajdistill.verify.math import boxed_contents

    return any(b.strip() for b in boxed_contents(text))


def refinement_status(text: str, finished: bool, kind: str) -> str:
    """`ok`, or why the refinement cannot be trained on: empty, truncated, bad_format."""
    if not text.strip():
        return "empty"
    if not finished:
        return "truncated"
    return "ok" if answer_in_format(text, kind) else "bad_format"


def joint_outcome(y_o_passed: bool, y_r_passed: bool) -> str:
    return f"{'pass' if y_o_passed else 'fail'}_to_{'pass' if y_r_passed else 'fail'}"


# -- the refinement table (TRD paper, appendix B.1) --------------------------------------------
def refinement_table(rows: list[dict]) -> dict:
    """Pass rate and median length of y_o vs y_r, joint outcomes and refinement statuses."""
    n = len(rows)

    def rate(key):
        p = sum(bool(r[key]) for r in rows) / n if n else float("nan")
        return {"mean": p, "se": math.sqrt(p * (1 - p) / n) if n else float("nan")}

    def median(key, subset=None):
        values = [r[key] for r in (subset if subset is not None else rows)]
        return float(statistics.median(values)) if values else float("nan")

    usable = [r for r in rows if r["refine_status"] == "ok"]
    return {
        "rows": n,
        "problems": len({r["problem_id"] for r in rows}),
        "y_o_pass": rate("y_o_passed"),
        "y_r_pass": rate("y_r_passed"),
        "y_o_median_tokens": median("y_o_tokens"),
        "y_r_median_tokens": median("y_r_tokens"),
        "y_r_median_tokens_usable": median("y_r_tokens", usable),
        "joint": {j: sum(joint_outcome(r["y_o_passed"], r["y_r_passed"]) == j for r in rows) for j in JOINT},
        "refine_status": {s: sum(r["refine_status"] == s for r in rows) for s in STATUSES},
        "echo_stripped": sum(bool(r["echo_stripped"]) for r in rows),
        "y_o_truncated": sum(not r["y_o_finished"] for r in rows),
    }


def refinement_table_markdown(t: dict, title: str = "TRD refinement: y_o (student) vs y_r (refined)") -> str:
    pct = lambda s: f"{100 * s['mean']:.1f} ± {100 * s['se']:.1f}"  # noqa: E731
    j, st = t["joint"], t["refine_status"]
    return "\n".join([
        f"### {title}", "",
        f"{t['rows']} rollouts on {t['problems']} problems; pass rate in %, mean ± standard error.", "",
        "| trajectory | verifier pass rate | median tokens |", "|---|---|---|",
        f"| y_o (stage 1) | {pct(t['y_o_pass'])} | {t['y_o_median_tokens']:.0f} |",
        f"| y_r (stage 2) | {pct(t['y_r_pass'])} | {t['y_r_median_tokens']:.0f} "
        f"(usable only: {t['y_r_median_tokens_usable']:.0f}) |", "",
        "| fail->pass | pass->fail | pass->pass | fail->fail |", "|---|---|---|---|",
        f"| {j['fail_to_pass']} | {j['pass_to_fail']} | {j['pass_to_pass']} | {j['fail_to_fail']} |", "",
        "| refinement ok | empty | truncated | not in answer format | template echo stripped |",
        "|---|---|---|---|---|",
        f"| {st['ok']} | {st['empty']} | {st['truncated']} | {st['bad_format']} | {t['echo_stripped']} |", "",
    ])


# -- the dataset ---------------------------------------------------------------------------------
def save_rows(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)
    return path


def load_rows(path: str | Path) -> list[dict]:
    """Rows of a saved stage-1/2 dataset: one parquet file, or a folder of them (online mode)."""
    import pyarrow.parquet as pq

    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise UserError(f"trd.dataset: no parquet file at {path}")
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    missing = {"problem_id", "prompt_ids", "y_o_ids", "y_r_ids", "refine_prompt_ids", "refine_status"} - set(rows[0] if rows else {})
    if missing:
        raise UserError(f"trd.dataset {path}: not a TRD dataset (missing columns {sorted(missing)})")
    return rows


