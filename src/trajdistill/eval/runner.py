"""Held-out evaluation: greedy accuracy, Avg@k and unbiased Pass@k with standard errors.

Every sample is written with its verdict (`samples.jsonl`), the summary to JSON and Markdown.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable

from trajdistill.config import EvalSpec, PromptSpec
from trajdistill.eval.metrics import mean_se, pass_at_k
from trajdistill.files import atomic_write_json, atomic_write_jsonl, atomic_write_text
from trajdistill.records import Problem, Rollout, Verdict
from trajdistill.rollout import SamplingParams, Sampler, render_prompt
from trajdistill.verify import Verifiers, check_all

REFLECTION_WORDS = ("wait", "actually", "alternatively", "hmm", "however", "let me check", "double-check",
                    "verify")
_REFLECTION_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in REFLECTION_WORDS) + r")\b", re.IGNORECASE)


def reflection_count(text: str) -> int:
    return len(_REFLECTION_RE.findall(text))


def _stat(values: list[float]) -> dict[str, float]:
    mean, se = mean_se(values)
    return {"mean": mean, "se": se}


def evaluate(
    sampler: Sampler,
    tokenizer,
    problems: list[Problem],
    spec: EvalSpec,
    prompt: PromptSpec,
    verify: Verifiers | Callable[[Problem, str], Verdict],
    *,
    out_dir: Path | None = None,
    label: str = "eval",
) -> dict:
    """Sample with `sampler` (already synced with the weights to evaluate), verify and summarise;
    write `<out_dir>/<label>.{json,md}` and `<label>.samples.jsonl`."""
    prompts = [render_prompt(tokenizer, p, prompt.instruction, prompt.system) for p in problems]
    ids = [p.id for p in problems]
    by_id = {p.id: p for p in problems}
    n = max(spec.k)
    rows: list[dict] = []
    summary: dict = {"label": label, "problems": len(problems), "n": n, "k": list(spec.k),
                     "temperature": spec.temperature}

    def run(params: SamplingParams, mode: str) -> dict[str, list[Rollout]]:
        grouped: dict[str, list[Rollout]] = {i: [] for i in ids}
        rollouts = sampler.sample(prompts, params, ids)
        for r, verdict in zip(rollouts, check_all(verify, [by_id[r.problem_id] for r in rollouts], [r.text for r in rollouts])):
            r.verdict = verdict
            grouped[r.problem_id].append(r)
            rows.append({"mode": mode, "problem_id": r.problem_id, "sample": r.sample_index,
                         "response": r.text, "passed": r.verdict.passed, "status": r.verdict.status,
                         "tokens": len(r.response_ids), "finished": r.finished})
        return grouped

    per_problem: dict[str, dict] = {i: {} for i in ids}
    if spec.greedy:
        greedy = run(SamplingParams(n=1, temperature=0.0, max_new_tokens=spec.max_new_tokens), "greedy")
        summary["greedy"] = _stat([float(g[0].verdict.passed) for g in greedy.values()])
        for i, g in greedy.items():
            per_problem[i]["greedy"] = int(g[0].verdict.passed)
    sampled = run(SamplingParams(n=n, temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k,
                                 max_new_tokens=spec.max_new_tokens, seed=spec.seed), "sampled")
    correct = [sum(r.verdict.passed for r in g) for g in sampled.values()]
    for i, c in zip(sampled, correct):
        per_problem[i]["correct"] = c
    summary[f"avg@{n}"] = _stat([c / n for c in correct])
    summary[f"avg@{n}"]["se_runs"] = runs_se(sampled.values(), n)
    for k in spec.k:
        summary[f"pass@{k}"] = _stat([pass_at_k(n, c, k) for c in correct])
    all_sampled = [r for g in sampled.values() for r in g]
    summary["response_tokens"] = _stat([float(len(r.response_ids)) for r in all_sampled])
    summary["reflections_per_response"] = _stat([float(reflection_count(r.text)) for r in all_sampled])
    total_tokens = sum(len(r.response_ids) for r in all_sampled) or 1
    summary["reflections_per_1k_tokens"] = 1000.0 * sum(reflection_count(r.text) for r in all_sampled) / total_tokens
    summary["truncated"] = sum(not r.finished for r in all_sampled) / max(1, len(all_sampled))
    # A verifier that failed is not a wrong answer: counted here, flagged in the table.
    summary["verifier_errors"] = sum(1 for row in rows if row["status"] in ("verifier_error", "verifier_timeout"))
    summary["per_problem"] = per_problem  # for paired before/after differences
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write_jsonl(out_dir / f"{label}.samples.jsonl", rows)
        atomic_write_json(out_dir / f"{label}.json", summary)
        atomic_write_text(out_dir / f"{label}.md", summary_markdown([summary]))
    return summary


def runs_se(groups, n: int) -> float:
    """REDI's error bar (seed 004, C.5): the standard deviation of the n benchmark-wide pass@1
    scores (sample j of every problem is run j) over sqrt(n). NaN for n = 1."""
    runs = [[0, 0] for _ in range(n)]
    for group in groups:
        for r in group:
            runs[r.sample_index][0] += int(r.verdict.passed)
            runs[r.sample_index][1] += 1
    scores = [passed / total for passed, total in runs if total]
    if len(scores) < 2:
        return float("nan")
    mean = sum(scores) / len(scores)
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) / math.sqrt(len(scores))


def metric_columns(summary: dict) -> list[str]:
    cols = ["greedy"] if "greedy" in summary else []
    return cols + [f"avg@{summary['n']}"] + [f"pass@{k}" for k in summary["k"]]


def fmt(stat: dict | None, scale: float = 100.0) -> str:
    """`mean ± per-problem SE`, and `[± runs SE]` (REDI's error bar) where it was computed."""
    if not stat or stat.get("mean") is None or math.isnan(stat["mean"]):
        return "-"
    runs = stat.get("se_runs")
    extra = f" [± {scale * runs:.1f}]" if runs is not None and not math.isnan(runs) else ""
    return f"{scale * stat['mean']:.1f} ± {scale * stat['se']:.1f}{extra}"


def _per_problem_values(summary: dict, column: str) -> dict[str, float]:
    per_problem, n = summary.get("per_problem") or {}, summary["n"]
    if column == "greedy":
        return {i: float(v["greedy"]) for i, v in per_problem.items() if "greedy" in v}
    if column.startswith("avg@"):
        return {i: v["correct"] / n for i, v in per_problem.items()}
    k = int(column.split("@")[1])
    return {i: pass_at_k(n, v["correct"], k) for i, v in per_problem.items()}


def paired_change(before: dict, after: dict, column: str) -> dict | None:
    """Mean per-problem change after - before with the standard error of the paired differences.

    Both evaluations score the same problems, so the difference's error is far smaller than the two
    unpaired errors combined; None when the two summaries do not cover the same problems.
    """
    a, b = _per_problem_values(before, column), _per_problem_values(after, column)
    if not a or a.keys() != b.keys() or before["n"] != after["n"]:
        return None
    return _stat([b[i] - a[i] for i in a])


def _signed(stat: dict | None) -> str:
    return "-" if stat is None else f"{100 * stat['mean']:+.1f} ± {100 * stat['se']:.1f}"


def summary_markdown(summaries: list[dict]) -> str:
    """One row per summary, accuracy columns in percent with standard errors.

    For exactly two summaries of the same problems (before/after), a last row gives the paired
    change per column: mean of the per-problem differences ± their standard error.
    """
    cols = metric_columns(summaries[0])
    lines = ["| run | problems | " + " | ".join(cols) + " | tokens |", "|---" * (len(cols) + 3) + "|"]
    for s in summaries:
        cells = [fmt(s.get(c)) for c in cols]
        lines.append(f"| {s['label']} | {s['problems']} | " + " | ".join(cells) +
                     f" | {s['response_tokens']['mean']:.0f} |")
    if len(summaries) == 2:
        changes = [paired_change(summaries[0], summaries[1], c) for c in cols]
        if all(c is not None for c in changes):
            tokens = summaries[1]["response_tokens"]["mean"] - summaries[0]["response_tokens"]["mean"]
            lines.append(f"| change (paired) | {summaries[0]['problems']} | " +
                         " | ".join(_signed(c) for c in changes) + f" | {tokens:+.0f} |")
    errors = [f"{s['label']}: {s['verifier_errors']}" for s in summaries if s.get("verifier_errors")]
    if errors:
        lines.append(f"\nVerifier errors (counted as not passed): {', '.join(errors)} responses; see the "
                     "`status` column of the samples file.")
    return "\n".join(lines) + "\n"
