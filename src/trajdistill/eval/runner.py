"""Held-out evaluation: greedy accuracy, Avg@k and unbiased Pass@k with standard errors.

Every sample is written with its verdict (`samples.jsonl`), the summary to JSON and Markdown.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path
from typing import Callable

from trajdistill.config import EvalSpec, PromptSpec
from trajdistill.eval.metrics import mean_se, pass_at_k
from trajdistill.files import atomic_write_json, atomic_write_jsonl, atomic_write_text
from trajdistill.records import Problem, Rollout, Verdict
from trajdistill.rollout import SamplingParams, Sampler, render_prompt
from trajdistill.train.distributed import gather_lists
from trajdistill.verify import Verifiers, check_all

REFLECTION_WORDS = ("wait", "actually", "alternatively", "hmm", "however", "let me check", "double-check",
                    "verify")
_REFLECTION_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in REFLECTION_WORDS) + r")\b", re.IGNORECASE)


def reflection_count(text: str) -> int:
    return len(_REFLECTION_RE.findall(text))


def _stat(values: list[float]) -> dict[str, float]:
    mean, se = mean_se(values)
    return {"mean": mean, "se": se}


def problem_seed(seed: int, problem_id: str) -> int:
    """The sampling seed of one problem: its samples do not depend on which other problems are
    evaluated with it, in which order, or on which process."""
    return (seed * 1_000_003 + zlib.crc32(problem_id.encode())) % 2**63


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
    rank: int = 0,
    world: int = 1,
) -> dict | None:
    """Sample with `sampler` (already synced with the weights to evaluate), verify and summarise;
    write `<out_dir>/<label>.{json,md}` and `<label>.samples.jsonl`.

    With several processes every process calls it: each samples and verifies `problems[rank::world]`,
    process 0 gathers the per-sample results, summarises, writes and returns the summary (None
    elsewhere). Sampled rollouts are seeded per problem (`problem_seed`), so the split does not
    change them; greedy rollouts are batched within each process's share.
    """
    mine = problems[rank::world]
    prompts = {p.id: render_prompt(tokenizer, p, prompt.instruction, prompt.system) for p in mine}
    n = max(spec.k)
    rows: list[dict] = []

    def record(rollouts: list[Rollout], mode: str) -> None:
        by_id = {p.id: p for p in mine}
        solved = [by_id[r.problem_id] for r in rollouts]
        verdicts = check_all(verify, solved, [r.text for r in rollouts])
        loose = lenient_passes(solved, [r.text for r in rollouts], verdicts) if spec.also_lenient else None
        for j, (r, verdict) in enumerate(zip(rollouts, verdicts)):
            rows.append({"mode": mode, "problem_id": r.problem_id, "sample": r.sample_index,
                         "response": r.text, "passed": verdict.passed, "status": verdict.status,
                         "tokens": len(r.response_ids), "finished": r.finished})
            if loose is not None:
                rows[-1]["passed_lenient"] = loose[j]

    if spec.greedy and mine:
        record(sampler.sample([prompts[p.id] for p in mine],
                              SamplingParams(n=1, temperature=0.0, max_new_tokens=spec.max_new_tokens),
                              [p.id for p in mine]), "greedy")
    if mine:  # one batched call, each problem's samples from its own seed
        params = SamplingParams(n=n, temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k,
                                max_new_tokens=spec.max_new_tokens,
                                prompt_seeds=tuple(problem_seed(spec.seed, p.id) for p in mine))
        record(sampler.sample([prompts[p.id] for p in mine], params, [p.id for p in mine]), "sampled")
    rows = gather_lists(rows)
    if rank != 0:
        return None
    order = {p.id: i for i, p in enumerate(problems)}
    rows.sort(key=lambda r: (r["mode"] != "greedy", order[r["problem_id"]], r["sample"]))
    summary = summarise(rows, [p.id for p in problems], spec, label)
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write_jsonl(out_dir / f"{label}.samples.jsonl", rows)
        atomic_write_json(out_dir / f"{label}.json", summary)
        atomic_write_text(out_dir / f"{label}.md", summary_markdown([summary]))
    return summary


def lenient_passes(problems: list[Problem], responses: list[str], verdicts: list[Verdict]) -> list[bool]:
    """`eval.also_lenient`: math responses re-graded leniently (the answer anywhere: the box, an
    answer phrase or the last number); other kinds keep their verdict, they have no lenient mode."""
    math_rows = [i for i, p in enumerate(problems) if p.kind == "math"]
    passes = [v.passed for v in verdicts]
    regraded = Verifiers({"math": {"grading": "lenient"}}).check_many(
        [problems[i] for i in math_rows], [responses[i] for i in math_rows])
    for i, verdict in zip(math_rows, regraded):
        passes[i] = verdict.passed
    return passes


def runs_se(sampled_rows: list[dict], n: int) -> float:
    """REDI's error bar (REDI paper, C.5): the standard deviation of the n benchmark-wide pass@1
    scores (sample j of every problem is run j) over sqrt(n). NaN for n = 1."""
    runs = [[0, 0] for _ in range(n)]
    for r in sampled_rows:
        runs[r["sample"]][0] += int(r["passed"])
        runs[r["sample"]][1] += 1
    scores = [passed / total for passed, total in runs if total]
    if len(scores) < 2:
        return float("nan")
    mean = sum(scores) / len(scores)
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) / math.sqrt(len(scores))


def _graded_columns(summary: dict, per_problem: dict, greedy: list | None, sampled: list, ids, n: int,
                    field: str, suffix: str) -> dict:
    """Greedy accuracy and Avg@n by the verdict `field` of each row, as `greedy{suffix}` and
    `avg@{n}{suffix}` (per problem: `greedy{suffix}`, `correct{suffix}`); returns the per-problem
    count of correct samples."""
    if greedy is not None:
        summary[f"greedy{suffix}"] = _stat([float(r[field]) for r in greedy])
        for r in greedy:
            per_problem[r["problem_id"]][f"greedy{suffix}"] = int(r[field])
    correct = {i: 0 for i in ids}
    for r in sampled:
        correct[r["problem_id"]] += int(r[field])
    for i, c in correct.items():
        per_problem[i][f"correct{suffix}"] = c
    summary[f"avg@{n}{suffix}"] = _stat([c / n for c in correct.values()])
    return correct


def summarise(rows: list[dict], ids: list[str], spec: EvalSpec, label: str) -> dict:
    """The summary of per-sample rows (`mode`, `problem_id`, `passed`, `tokens`, `finished`, ...)."""
    n = max(spec.k)
    summary: dict = {"label": label, "problems": len(ids), "n": n, "k": list(spec.k),
                     "temperature": spec.temperature}
    per_problem: dict[str, dict] = {i: {} for i in ids}
    greedy = [r for r in rows if r["mode"] == "greedy"]
    sampled = [r for r in rows if r["mode"] == "sampled"]
    correct = _graded_columns(summary, per_problem, greedy if spec.greedy else None, sampled, ids, n, "passed", "")
    summary[f"avg@{n}"]["se_runs"] = runs_se(sampled, n)
    for k in spec.k:
        summary[f"pass@{k}"] = _stat([pass_at_k(n, c, k) for c in correct.values()])
    summary["response_tokens"] = _stat([float(r["tokens"]) for r in sampled])
    summary["reflections_per_response"] = _stat([float(reflection_count(r["response"])) for r in sampled])
    total_tokens = sum(r["tokens"] for r in sampled) or 1
    summary["reflections_per_1k_tokens"] = 1000.0 * sum(reflection_count(r["response"]) for r in sampled) / total_tokens
    summary["truncated"] = sum(not r["finished"] for r in sampled) / max(1, len(sampled))
    # A verifier that failed is not a wrong answer: counted here, flagged in the table.
    summary["verifier_errors"] = sum(1 for r in rows if r["status"] in ("verifier_error", "verifier_timeout"))
    if any("passed_lenient" in r for r in rows):  # eval.also_lenient: the same samples, re-graded
        _graded_columns(summary, per_problem, greedy if spec.greedy else None, sampled, ids, n,
                        "passed_lenient", "_lenient")
    summary["per_problem"] = per_problem  # for paired before/after differences
    return summary


def metric_columns(summary: dict) -> list[str]:
    cols = ["greedy"] if "greedy" in summary else []
    cols += [f"avg@{summary['n']}"] + [f"pass@{k}" for k in summary["k"]]
    return cols + [c for c in ("greedy_lenient", f"avg@{summary['n']}_lenient") if c in summary]


def column_title(column: str) -> str:
    """A column's table header: `greedy_lenient` -> `greedy (lenient)`."""
    return column.replace("_lenient", " (lenient)")


def fmt(stat: dict | None, scale: float = 100.0) -> str:
    """`mean ± per-problem SE`, and `[± runs SE]` (REDI's error bar) where it was computed."""
    if not stat or stat.get("mean") is None or math.isnan(stat["mean"]):
        return "-"
    runs = stat.get("se_runs")
    extra = f" [± {scale * runs:.1f}]" if runs is not None and not math.isnan(runs) else ""
    return f"{scale * stat['mean']:.1f} ± {scale * stat['se']:.1f}{extra}"


def _per_problem_values(summary: dict, column: str) -> dict[str, float]:
    per_problem, n = summary.get("per_problem") or {}, summary["n"]
    if column in ("greedy", "greedy_lenient"):
        return {i: float(v[column]) for i, v in per_problem.items() if column in v}
    if column.startswith("avg@") and column.endswith("_lenient"):
        return {i: v["correct_lenient"] / n for i, v in per_problem.items() if "correct_lenient" in v}
    if column.startswith("avg@"):
        return {i: v["correct"] / n for i, v in per_problem.items()}
    k = int(column.split("@")[1])
    return {i: pass_at_k(n, v["correct"], k) for i, v in per_problem.items()}


def paired_change(before: dict, after: dict, column: str) -> dict | None:
    """Mean per-problem change after - before with the standard error of the paired differences,
    and the number of `problems` paired (`{"mean", "se", "problems"}`).

    Both evaluations score the same problems, so the difference's error is far smaller than the two
    unpaired errors combined; None when the two summaries do not cover the same problems.
    """
    a, b = _per_problem_values(before, column), _per_problem_values(after, column)
    if not a or a.keys() != b.keys() or before["n"] != after["n"]:
        return None
    return {**_stat([b[i] - a[i] for i in a]), "problems": len(a)}


def _signed(stat: dict | None) -> str:
    return "-" if stat is None else f"{100 * stat['mean']:+.1f} ± {100 * stat['se']:.1f}"


def summary_markdown(summaries: list[dict]) -> str:
    """One row per summary, accuracy columns in percent with standard errors.

    For exactly two summaries of the same problems (before/after), a last row gives the paired
    change per column: mean of the per-problem differences ± their standard error.
    """
    cols = metric_columns(summaries[0])
    lines = ["| run | problems | " + " | ".join(map(column_title, cols)) + " | tokens |", "|---" * (len(cols) + 3) + "|"]
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
