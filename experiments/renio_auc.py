"""How well ReNIO's score s_i finds the incorrect rollouts, without any training.

Samples rollouts of the training problems with the student (renio preset's sampling settings),
scores them exactly as ReNIO's `collect` does (student log-probs from the sampler, teacher
log-probs from the privileged teacher in OPSD, both at the sampling temperature), verifies them,
and reports the ROC AUC of s_i against "incorrect" with a 95% interval (Hanley-McNeil and a
stratified bootstrap). For comparison, the AUC of the response length (a naive signal).

    nice -n 5 .venv/bin/python experiments/renio_auc.py --problems 128 --n 2 --out runs/renio-auc
    (OPD: --config configs/renio-opd.yaml --set teacher.name=/path/to/teacher)

Writes `<out>/scores.jsonl` (one row per rollout) and `<out>/auc.json` after every chunk; a rerun
with the same arguments resumes after the chunks already scored.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from trajdistill.config import load_config
from trajdistill.eval.auc import auc_with_ci
from trajdistill.files import atomic_write_json, atomic_write_jsonl, read_jsonl
from trajdistill.train.run import build, load_run_problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/renio-opsd.yaml")
    ap.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument("--problems", type=int, default=128, help="training problems to sample")
    ap.add_argument("--n", type=int, default=2, help="rollouts per problem")
    ap.add_argument("--chunk", type=int, default=16, help="problems per collect call")
    ap.add_argument("--out", default="runs/renio-auc")
    args = ap.parse_args()

    out = Path(args.out)
    method_name = load_config(args.config, args.set).method  # the outcome filter lives in its section
    cfg = load_config(args.config, [f"sampling.n={args.n}", f"output_dir={out}", f"{method_name}.outcome_filter=all",
                                    *args.set])
    torch.manual_seed(cfg.seed)
    ctx, method, _ = build(cfg, out)
    problems = load_run_problems(cfg).train[: args.problems]
    scores_path = out / "scores.jsonl"
    rows = read_jsonl(scores_path) if scores_path.exists() else []  # resume: chunks already scored
    done = {r["problem_id"] for r in rows}
    started = time.perf_counter()
    for step, start in enumerate(range(0, len(problems), args.chunk)):
        chunk = problems[start : start + args.chunk]
        if all(p.id in done for p in chunk):
            continue
        result = method.collect(chunk, step)
        for r in (r for r in result.rollouts if r.score is not None):  # empty responses are not scored
            rows.append({"problem_id": r.problem_id, "score": r.score, "passed": bool(r.verdict.passed),
                         "tokens": len(r.response_ids), "finished": r.finished, "text": r.text})
        atomic_write_jsonl(scores_path, rows)
        print(f"{len(rows)} rollouts, pass rate {sum(r['passed'] for r in rows) / len(rows):.3f}, "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        write_summary(args, cfg, rows, out, started)
    print(json.dumps(write_summary(args, cfg, rows, out, started), indent=2))


def write_summary(args, cfg, rows, out, started) -> dict:
    """AUC of s_i (and of the length, a naive signal) against "incorrect", over the rows so far."""
    incorrect = [not r["passed"] for r in rows]
    scores = [r["score"] for r in rows]
    summary = {
        "config": args.config, "setting": cfg.method_class.setting_of(cfg.options), "rollouts": len(rows),
        "problems": len({r["problem_id"] for r in rows}),
        "ratio_cap": cfg.options.ratio_cap, "threshold": cfg.options.threshold,
        "sampling_temperature": cfg.sampling.temperature, "max_new_tokens": cfg.sampling.max_new_tokens,
        "incorrect": sum(incorrect), "with_pivotal": sum(s > 0 for s in scores),
        "auc_score": auc_with_ci(scores, incorrect).to_dict(),
        "auc_score_bootstrap": auc_with_ci(scores, incorrect, method="bootstrap").to_dict(),
        "auc_length": auc_with_ci([r["tokens"] for r in rows], incorrect).to_dict(),
        "mean_score_incorrect": _mean([s for s, bad in zip(scores, incorrect) if bad]),
        "mean_score_correct": _mean([s for s, bad in zip(scores, incorrect) if not bad]),
        "seconds_this_invocation": time.perf_counter() - started,
    }
    atomic_write_json(out / "auc.json", summary)
    return summary


def _mean(values):
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    main()
