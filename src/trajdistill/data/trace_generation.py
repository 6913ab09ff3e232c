"""Sampling teacher traces, resumably: chunks of problems, each verified and written whole.

A restarted run reads the chunk files, skips every problem id already there and samples the rest;
the manifest pins the sampling settings so a resumed run cannot silently change them.
"""

from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from trajdistill import UserError
from trajdistill.data.trace_files import completed_rows, write_rows
from trajdistill.files import atomic_write_json, atomic_write_jsonl, error_line
from trajdistill.records import Problem, Verdict
from trajdistill.rollout import SamplingParams, render_privileged_prompt, render_prompt
from trajdistill.verify import check_all


def student_text(problem: Problem, instruction: str) -> str:
    """The user turn the student is trained on (same text `render_prompt` templates)."""
    return f"{problem.prompt}\n\n{instruction}".strip() if instruction else problem.prompt


def _chunk_seed(seed: int, ids: list[str]) -> int:
    digest = hashlib.sha256(("\x00".join([str(seed)] + ids)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class TraceSettings:
    """What the manifest pins: a resumed run must sample the same way as the one it continues."""

    teacher: str
    context: str  # plain | privileged
    n: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    instruction: str
    system: str | None
    privileged: str
    seed: int


def _check_manifest(out_dir: Path, settings: TraceSettings) -> None:
    path = out_dir / "manifest.json"
    wanted = asdict(settings)
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: not a readable manifest ({error_line(err)}); use a new output folder") from None
        changed = sorted(k for k in wanted if found.get(k) != wanted[k])
        if changed:
            raise UserError(f"{out_dir} holds traces sampled with other settings ({', '.join(changed)}); "
                            "use a new output folder or the same settings to resume")
    else:
        atomic_write_json(path, wanted)


def generate_traces(
    problems: list[Problem],
    sampler,
    tokenizer,
    verify: Callable[[Problem, str], Verdict],
    out_dir: str | Path,
    settings: TraceSettings,
    *,
    problems_per_chunk: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Sample `settings.n` traces per problem, verify them, write chunks; return all rows.

    Rows: problem_id, sample_index, prompt, completion, correct, verdict (the verifier's status),
    length (response tokens, EOS included), prompt_length (templated student prompt), finished
    (stopped at EOS rather than at max_new_tokens), answer, teacher, context.
    """
    out_dir = Path(out_dir)
    (out_dir / "chunks").mkdir(parents=True, exist_ok=True)
    _check_manifest(out_dir, settings)
    if settings.context == "privileged":
        missing = [p.id for p in problems if not p.reference]
        if missing:
            raise UserError(f"privileged context needs a reference solution; {len(missing)} problems lack one "
                            f"(first: {missing[0]})")
    done_rows = completed_rows(out_dir)
    done = {r["problem_id"] for r in done_rows}
    pending = [p for p in problems if p.id not in done]
    numbers = [int(c.stem.split("-")[1]) for c in (out_dir / "chunks").glob("chunk-*.jsonl")]
    next_chunk = max(numbers, default=-1) + 1
    for start in range(0, len(pending), problems_per_chunk):
        chunk = pending[start : start + problems_per_chunk]
        rows = sample_chunk(chunk, sampler, tokenizer, verify, settings)
        chunk_path = out_dir / "chunks" / f"chunk-{next_chunk:06d}.jsonl"
        try:
            atomic_write_jsonl(chunk_path, rows)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UserError(f"{err.strerror} writing {chunk_path}; the traces of the {len(done) + start} problems "
                            "written before are intact: free some space and rerun the same command to "
                            "continue") from None
        next_chunk += 1
        if progress:
            progress(len(done) + start + len(chunk), len(done) + len(pending))
    wanted = {p.id for p in problems}
    rows = [r for r in completed_rows(out_dir) if r["problem_id"] in wanted]
    order = {p.id: i for i, p in enumerate(problems)}
    rows.sort(key=lambda r: (order[r["problem_id"]], r["sample_index"]))
    write_rows(rows, out_dir, "traces")
    atomic_write_json(out_dir / "summary.json", trace_summary(rows))
    return rows


def sample_chunk(problems: list[Problem], sampler, tokenizer, verify, settings: TraceSettings) -> list[dict]:
    s = settings
    if s.context == "privileged":
        prompts = [render_privileged_prompt(tokenizer, p, s.privileged, s.instruction, s.system) for p in problems]
    else:
        prompts = [render_prompt(tokenizer, p, s.instruction, s.system) for p in problems]
    params = SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                            max_new_tokens=s.max_new_tokens, seed=_chunk_seed(s.seed, [p.id for p in problems]))
    by_id = {p.id: p for p in problems}
    student_lengths = {p.id: len(render_prompt(tokenizer, p, s.instruction, s.system)) for p in problems}
    rows = []
    rollouts = sampler.sample(prompts, params, [p.id for p in problems])
    verdicts = check_all(verify, [by_id[r.problem_id] for r in rollouts], [r.text for r in rollouts])
    for r, verdict in zip(rollouts, verdicts):
        problem = by_id[r.problem_id]
        rows.append({
            "problem_id": r.problem_id, "sample_index": r.sample_index,
            "prompt": student_text(problem, s.instruction), "completion": r.text,
            "correct": bool(verdict.passed), "verdict": verdict.status or ("passed" if verdict.passed else "failed"),
            "length": len(r.response_ids), "prompt_length": student_lengths[r.problem_id],
            "finished": bool(r.finished), "answer": problem.answer, "teacher": s.teacher, "context": s.context,
        })
    return rows


def trace_summary(rows: list[dict]) -> dict[str, Any]:
    by_problem: dict[str, list[bool]] = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], []).append(bool(r["correct"]))
    n = max(1, len(rows))
    return {
        "problems": len(by_problem), "traces": len(rows),
        "pass_rate": sum(r["correct"] for r in rows) / n,
        "truncated": sum(not r.get("finished", True) for r in rows) / n,
        "mean_length": sum(r.get("length") or 0 for r in rows) / n,
        "problems_all_correct": sum(all(v) for v in by_problem.values()),
        "problems_all_incorrect": sum(not any(v) for v in by_problem.values()),
        "problems_mixed": sum(any(v) and not all(v) for v in by_problem.values()),
    }
