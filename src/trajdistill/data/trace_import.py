"""Trace rows from an external data set with several judged generations per problem (OpenR1-Math-Raw)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

from trajdistill import UserError
from trajdistill.data.trace_pairs import fill_lengths


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
