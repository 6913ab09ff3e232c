"""Strict vs lenient math grading of a run's held-out evaluations, from its saved samples.

    .venv/bin/python experiments/grading_gap.py runs/demo
    .venv/bin/python experiments/grading_gap.py runs/t/a runs/t/b --pair b:a --pair a:base   # several runs

Re-grades every response in `RUN/eval/{before,after}.samples.jsonl` (nothing is sampled again) with
the papers' strict rule (the last \\boxed{} only; TRD paper, appendix C.2) and with the lenient one (also "the
answer is X", "#### X" or the last number), and prints greedy and Avg@n under both, with the paired
change. With several runs: each run's `after` (the first run's `before` as "base") under both
gradings, and the paired changes asked for with --pair. The problems come from the run's own config, so the gold answers are the ones it used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def regrade(run: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """(eval, grading, mode) -> per-problem accuracy of `run`'s saved samples, graded both ways."""
    from trajdistill.config import load_config
    from trajdistill.train.run import load_run_problems
    from trajdistill.verify import Verifiers

    cfg = load_config(run / "config.yaml")
    problems = {p.id: p for p in load_run_problems(cfg).eval}
    verifiers = {mode: Verifiers({"math": {"grading": mode}}) for mode in ("strict", "lenient")}
    scores: dict[tuple[str, str, str], dict[str, float]] = {}
    for label in ("before", "after"):
        path = run / "eval" / f"{label}.samples.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for grading, verify in verifiers.items():
            verdicts = verify.check_many([problems[r["problem_id"]] for r in rows], [r["response"] for r in rows])
            for mode in ("greedy", "sampled"):
                per_problem: dict[str, list[float]] = {}
                for r, v in zip(rows, verdicts):
                    if r["mode"] == mode:
                        per_problem.setdefault(r["problem_id"], []).append(float(v.passed))
                scores[(label, grading, mode)] = {pid: sum(v) / len(v) for pid, v in per_problem.items()}
    return scores


def paired(a: dict[str, float], b: dict[str, float]) -> str:
    """Mean ± SE of the per-problem differences a - b, in points."""
    from trajdistill.eval.metrics import mean_se

    mean, se = mean_se([a[i] - b[i] for i in b])
    return f"{100 * mean:+.1f} ± {100 * se:.1f}"


def one_run(scores) -> None:
    from trajdistill.eval.metrics import mean_se

    print("| grading | eval | greedy | avg@n | problems |\n|---|---|---|---|---|")
    for grading in ("strict", "lenient"):
        for label in ("before", "after"):
            if (label, grading, "greedy") not in scores:
                continue
            cells = []
            for mode in ("greedy", "sampled"):
                mean, se = mean_se(list(scores[(label, grading, mode)].values()))
                cells.append(f"{100 * mean:.1f} ± {100 * se:.1f}")
            print(f"| {grading} | {label} | {cells[0]} | {cells[1]} | {len(scores[(label, grading, 'greedy')])} |")
        if ("after", grading, "greedy") in scores:
            cells = [paired(scores[("after", grading, m)], scores[("before", grading, m)]) for m in ("greedy", "sampled")]
            print(f"| {grading} | change (paired) | {cells[0]} | {cells[1]} | |")


def many_runs(runs: list[Path], pairs: list[str]) -> None:
    """Every run's `after` (and the first run's `before` as base) under both gradings, then the
    paired changes named by `pairs` ("run:baseline", run directory names; "base" for the base)."""
    from trajdistill.eval.metrics import mean_se

    columns = [(g, m) for g in ("strict", "lenient") for m in ("greedy", "sampled")]
    after: dict[str, dict] = {}
    for run in runs:
        scores = regrade(run)
        if not after:  # the first run's before evaluation is the base row
            after["base"] = {c: scores[("before", *c)] for c in columns}
        after[run.name] = {c: scores[("after", *c)] for c in columns}
    print("| run | strict greedy | strict avg@n | lenient greedy | lenient avg@n |\n|---|---|---|---|---|")
    for name, scores in after.items():
        cells = [mean_se(list(scores[c].values())) for c in columns]
        print(f"| {name} | " + " | ".join(f"{100 * m:.1f} ± {100 * se:.1f}" for m, se in cells) + " |")
    if pairs:
        print("\n| paired change | strict greedy | strict avg@n | lenient greedy | lenient avg@n |\n|---|---|---|---|---|")
    for pair in pairs:
        run, base = pair.split(":")
        cells = [paired(after[run][c], after[base][c]) for c in columns]
        print(f"| {run} - {base} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--pair", action="append", default=[], metavar="RUN:BASELINE",
                    help="with several runs: a paired change to print (run directory names; 'base' is "
                         "the first run's before evaluation)")
    args = ap.parse_args()
    if len(args.runs) == 1:
        one_run(regrade(args.runs[0]))
    else:
        many_runs(args.runs, args.pair)


if __name__ == "__main__":
    main()
