"""Teacher traces for offline distillation (REDI, seeds 001 and 004): generate, pair, import.

    problems --teacher samples n traces--> verify --> traces (prompt, completion, correct, length)
    traces --first correct + first incorrect per problem, length filters--> pairs (prompt/chosen/rejected)
    traces --every correct trace--> SFT set (prompt/completion)

Rows follow Hugging Face conventions, so `datasets.load_dataset("json"/"parquet", ...)` and TRL read
them directly. `prompt` is the *student's* user turn (problem + answer instruction); the trainer
renders it with the model's chat template. A privileged teacher (problem + reference solution)
only changes what the teacher saw while sampling (`context` column), never the training prompt.

Generation is resumable: problems are sampled in chunks, and each finished chunk is written as one
file by an atomic rename. A restarted run reads the chunk files, skips every problem id already
there and samples the rest, so rows are never duplicated or lost; `traces.jsonl` / `traces.parquet`
are rebuilt from the chunks at the end.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from trajdistill import UserError
from trajdistill.files import (atomic_write_json, atomic_write_jsonl, error_line, iter_jsonl_numbered,
                              read_jsonl)
from trajdistill.records import Problem, Verdict
from trajdistill.rollout import SamplingParams, render_privileged_prompt, render_prompt
from trajdistill.rollout.prompts import chat_ids
from trajdistill.verify import check_all

# ---------------------------------------------------------------------------------------------
# Reading and writing row sets


@dataclass(frozen=True)
class Column:
    """A column a row set must (or may) have, and the types its values may take (None only if optional)."""

    types: tuple[type, ...]
    required: bool = True


TRACE_COLUMNS = {
    "problem_id": Column((str, int)), "prompt": Column((str,)), "completion": Column((str,)),
    "correct": Column((bool,)), "sample_index": Column((int,), required=False),
    "length": Column((int,), required=False), "prompt_length": Column((int,), required=False),
    "finished": Column((bool,), required=False),
}
PAIR_COLUMNS = {"prompt": Column((str,)), "chosen": Column((str,)), "rejected": Column((str,))}
SFT_COLUMNS = {"prompt": Column((str,)), "completion": Column((str,))}


def read_rows(path: str | Path, columns: Mapping[str, Column] | None = None) -> list[dict]:
    """Rows of a .jsonl / .parquet file or a saved `datasets` directory (a trace or pair set).

    A `trajdistill traces` output folder reads its traces.jsonl (or, while still being generated,
    its finished chunks). An unreadable file, a bad JSONL line (see `trajdistill.files`), a set
    without rows, or a row breaking `columns` is a UserError naming the file and line (or row).
    """
    path = Path(path)
    lines: list[int] | None = None
    if path.is_dir() and (path / "traces.jsonl").is_file():  # a `trajdistill traces` output folder
        path = path / "traces.jsonl"
    if path.is_dir() and (path / "chunks").is_dir():  # one still being generated: its finished chunks
        rows = completed_rows(path)
    elif not path.exists():
        raise UserError(f"{path}: no such file or directory")
    elif path.is_dir():
        rows = _dataset_dir_rows(path)
    elif path.suffix == ".jsonl":
        numbered = list(iter_jsonl_numbered(path, torn_tail="error"))
        lines, rows = [n for n, _ in numbered], [r for _, r in numbered]
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow's errors vary by corruption; the user needs the file name
            raise UserError(f"{path}: not a readable Parquet file ({error_line(err)})") from None
    else:
        raise UserError(f"{path}: unsupported data set file (use .jsonl, .parquet or a saved datasets directory)")
    if not rows:
        raise UserError(f"{path}: no rows")
    if columns:
        for i, row in enumerate(rows):
            _check_row(row, columns, f"{path}:{lines[i]}" if lines is not None else f"{path} row {i}")
    return rows


def _dataset_dir_rows(path: Path) -> list[dict]:
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for a damaged or foreign directory
        raise UserError(f"{path}: not a readable saved dataset ({error_line(err)})") from None
    if isinstance(data, DatasetDict):
        if len(data) != 1:
            raise UserError(f"{path}: holds several splits {sorted(data)}; save the one to use")
        data = next(iter(data.values()))
    return data.to_list()


def _check_row(row: Mapping, columns: Mapping[str, Column], where: str) -> None:
    for name, column in columns.items():
        value = row.get(name)
        if value is None:
            if column.required:
                raise UserError(f"{where}: field '{name}' is missing")
            continue
        bool_ok = bool in column.types
        if not isinstance(value, column.types) or (isinstance(value, bool) and not bool_ok):
            wanted = " or ".join(t.__name__ for t in column.types)
            raise UserError(f"{where}: field '{name}' must be {wanted}, got {type(value).__name__}")


def write_rows(rows: list[dict], out_dir: str | Path, name: str) -> list[Path]:
    """`<name>.jsonl` and `<name>.parquet` in `out_dir`, each replaced atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / f"{name}.jsonl"
    atomic_write_jsonl(jsonl, rows)
    parquet = out_dir / f"{name}.parquet"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".parquet.tmp", dir=out_dir)
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, parquet)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return [jsonl, parquet]


# ---------------------------------------------------------------------------------------------
# Generation


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


def completed_rows(out_dir: str | Path) -> list[dict]:
    """Every row of every finished chunk, in chunk order (chunks are written whole, so a cut-off
    line is damage, not an interrupted write)."""
    chunks = sorted((Path(out_dir) / "chunks").glob("chunk-*.jsonl"))
    return [row for chunk in chunks for row in read_jsonl(chunk, torn_tail="error")]


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


# ---------------------------------------------------------------------------------------------
# Pairs and the SFT set


@dataclass(frozen=True)
class PairFilter:
    """Length limits (tokens; None = no limit) and whether traces cut at max_new_tokens count."""

    max_prompt_tokens: int | None = None
    max_response_tokens: int | None = None
    drop_truncated: bool = True


def fill_lengths(rows: list[dict], tokenizer, system: str | None = None) -> None:
    """Set missing `length` / `prompt_length` (imported traces) with the student's tokenizer."""
    for r in rows:
        if r.get("prompt_length") is None:
            r["prompt_length"] = len(chat_ids(tokenizer, r["prompt"], system))
        if r.get("length") is None:
            r["length"] = len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) + 1  # + EOS


def _usable(row: dict, limits: PairFilter) -> bool:
    if limits.drop_truncated and not row.get("finished", True):
        return False
    for key, limit in (("prompt_length", limits.max_prompt_tokens), ("length", limits.max_response_tokens)):
        if limit is not None:
            if row.get(key) is None:
                raise UserError(f"trace of problem {row.get('problem_id')} has no '{key}'; pass a tokenizer "
                                "so lengths can be measured")
            if row[key] > limit:
                return False
    return True


def build_pairs(traces: Iterable[Mapping], limits: PairFilter = PairFilter()
                ) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(pairs, sft, stats) from labelled traces, as the REDI authors build them.

    A trace is usable if it passes the length filters (and finished, unless drop_truncated is off).
    Pairs: per problem, the first usable correct and the first usable incorrect trace (by
    sample_index), so each problem gives at most one pair. SFT set: every usable correct trace.
    """
    groups: dict[str, list[Mapping]] = {}
    for row in traces:
        groups.setdefault(str(row["problem_id"]), []).append(row)
    pairs, sft = [], []
    stats: Counter = Counter()
    for pid, rows in groups.items():
        rows = sorted(rows, key=lambda r: r.get("sample_index", 0))
        usable = [r for r in rows if _usable(r, limits)]
        stats["traces"] += len(rows)
        stats["filtered_out"] += len(rows) - len(usable)
        correct = [r for r in usable if r["correct"]]
        incorrect = [r for r in usable if not r["correct"]]
        sft += [{"prompt": r["prompt"], "completion": r["completion"], "problem_id": pid,
                 "length": r.get("length")} for r in correct]
        if correct and incorrect:
            c, i = correct[0], incorrect[0]
            pairs.append({"prompt": c["prompt"], "chosen": c["completion"], "rejected": i["completion"],
                          "problem_id": pid, "chosen_length": c.get("length"), "rejected_length": i.get("length")})
        else:
            stats["problems_without_pair"] += 1
    stats.update(problems=len(groups), pairs=len(pairs), sft=len(sft))
    return pairs, sft, dict(stats)


# ---------------------------------------------------------------------------------------------
# External trace sets (OpenR1-Math-Raw shape)


@dataclass(frozen=True)
class GenerationFields:
    """Columns of a data set holding several generations per problem (OpenR1-Math-Raw defaults).

    `generations` is a list of responses and `correct` a list of per-generation flags of the same
    length (a None flag, or a None list, means "not judged": those generations are skipped).
    """

    prompt: str = "problem"
    generations: str = "generations"
    correct: str = "correctness_math_verify"
    id: str | None = None
    answer: str | None = "answer"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | None] | None) -> "GenerationFields":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(mapping or {}) - known)
        if unknown:
            raise UserError(f"unknown field mapping key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**(mapping or {}))


def import_generations(records: Iterable[Mapping], fields: GenerationFields = GenerationFields(), *,
                       instruction: str = "", tokenizer=None, system: str | None = None,
                       source: str = "external") -> tuple[list[dict], dict[str, int]]:
    """Trace rows (the `generate_traces` schema) from an OpenR1-Math-Raw-shaped data set."""
    rows, stats = [], Counter()
    for index, record in enumerate(records):
        where = f"record {index}"
        for key in (fields.prompt, fields.generations):
            if record.get(key) is None:
                raise UserError(f"{where}: field '{key}' is missing")
        generations, flags = record[fields.generations], record.get(fields.correct)
        if flags is None:
            stats["records_unjudged"] += 1
            continue
        if len(flags) != len(generations):
            raise UserError(f"{where}: {len(generations)} generations but {len(flags)} '{fields.correct}' flags")
        pid = str(record[fields.id]) if fields.id else f"{source}-{index}"
        prompt = f"{record[fields.prompt]}\n\n{instruction}".strip() if instruction else str(record[fields.prompt])
        for j, (text, flag) in enumerate(zip(generations, flags)):
            if flag is None or text is None:
                stats["generations_unjudged"] += 1
                continue
            rows.append({"problem_id": pid, "sample_index": j, "prompt": prompt, "completion": text,
                         "correct": bool(flag), "verdict": "passed" if flag else "failed", "length": None,
                         "prompt_length": None, "finished": True,
                         "answer": str(record[fields.answer]) if fields.answer and record.get(fields.answer)
                         is not None else None, "teacher": source, "context": "external"})
    if tokenizer is not None:
        fill_lengths(rows, tokenizer, system)
    stats.update(traces=len(rows))
    return rows, dict(stats)
