"""Strict vs lenient math grading of a run's held-out evaluations, from its saved samples.

    .venv/bin/python experiments/grading_gap.py runs/demo

Re-grades every response in `RUN/eval/{before,after}.samples.jsonl` (nothing is sampled again) with
the papers' strict rule (the last \\boxed{} only; seed 003 C.2) and with the lenient one (also "the
answer is X", "#### X" or the last number), and prints greedy and Avg@n under both, with the paired
change. The problems come from the run's own config, so the gold answers are the ones it used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    args = ap.parse_args()

    from trajdistill.config import load_config
    from trajdistill.eval.metrics import mean_se
    from trajdistill.train.run import load_run_problems
    from trajdistill.verify import Verifiers

    cfg = load_config(args.run / "config.yaml")
    problems = {p.id: p for p in load_run_problems(cfg).eval}
    verifiers = {mode: Verifiers({"math": {"grading": mode}}) for mode in ("strict", "lenient")}
    scores: dict[tuple[str, str, str], dict[str, float]] = {}
    for label in ("before", "after"):
        path = args.run / "eval" / f"{label}.samples.jsonl"
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
        if (("after", grading, "greedy") in scores):
            cells = []
            for mode in ("greedy", "sampled"):
                b, a = scores[("before", grading, mode)], scores[("after", grading, mode)]
                mean, se = mean_se([a[i] - b[i] for i in b])
                cells.append(f"{100 * mean:+.1f} ± {100 * se:.1f}")
            print(f"| {grading} | change (paired) | {cells[0]} | {cells[1]} | |")


if __name__ == "__main__":
    main()
