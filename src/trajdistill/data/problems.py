"""Problem files (JSONL, Parquet, saved `datasets` directories) and the train/held-out split.

Each record becomes a `Problem` through a `FieldMap` (which column holds the prompt, the answer,
...). A bad record stops loading with a `UserError` that names the file, the line (JSONL, 1-based)
or row (Parquet / datasets, 0-based as in `dataset[i]`) and the field. JSONL files are read by
`trajdistill.files.iter_jsonl_numbered` (streamed, size-limited lines, a cut-off last line is an
error here); a file without a single problem is an error too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from trajdistill import UserError
from trajdistill.files import error_line, iter_jsonl_numbered
from trajdistill.records import Problem


@dataclass(frozen=True)
class FieldMap:
    """Which record field fills which `Problem` attribute.

    `prompt` is always required; `answer` is required for math problems (the verifier needs it),
    `tests` for code problems. `id`, `reference` and the other optional fields may be absent from
    a record (a missing id becomes `<file stem>-<record index>`), but when present must have the
    right type. Set an optional field to None to ignore that column altogether.
    """

    id: str | None = "id"
    prompt: str = "prompt"
    answer: str | None = "answer"
    reference: str | None = "reference"
    tests: str | None = "tests"

    @classmethod
    def from_any(cls, fields: FieldMap | Mapping[str, str | None] | None) -> FieldMap:
        """Accept a FieldMap, a partial dict such as `{"prompt": "question"}`, or None (defaults)."""
        if fields is None or isinstance(fields, FieldMap):
            return fields or cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise UserError(f"data.fields: unknown key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**fields)


class _Where:
    """Formats "file:line" (JSONL) or "file row N" (tables) for error messages."""

    def __init__(self, path: Path, line: int | None = None, row: int | None = None) -> None:
        self.text = f"{path}:{line}" if line is not None else f"{path} row {row}"

    def error(self, field: str, problem: str) -> UserError:
        return UserError(f"{self.text}: field '{field}' {problem}")


def _text(record: Mapping, column: str, where: _Where, *, required: bool) -> str | None:
    """A string field; numbers are accepted (answers are often stored as numbers)."""
    if column not in record or record[column] is None:
        if required:
            raise where.error(column, "is missing")
        return None
    value = record[column]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise where.error(column, f"must be a string, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise where.error(column, f"must be a finite number, got {value}")
        value = format_number(value)
    value = str(value)
    if required and not value.strip():
        raise where.error(column, "is empty")
    return value


def format_number(value: float | int) -> str:
    """`18.0` -> "18", `11.5` -> "11.5": gold answers read like what a model would write."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def record_to_problem(record: Any, fields: FieldMap, where: _Where, default_id: str, kind: str,
                      source: str) -> Problem:
    """One record -> Problem, or a UserError naming the offending field."""
    if not isinstance(record, Mapping):
        raise UserError(f"{where.text}: expected a JSON object, got {type(record).__name__}")
    if kind == "math" and fields.answer is None:
        raise UserError(f"{where.text}: math problems need an answer field (fields.answer is None)")
    prompt = _text(record, fields.prompt, where, required=True)
    answer = _text(record, fields.answer, where, required=kind == "math") if fields.answer else None
    reference = _text(record, fields.reference, where, required=False) if fields.reference else None
    tests = record.get(fields.tests) if fields.tests else None
    if kind == "code" and tests is None:
        raise where.error(fields.tests or "tests", "is missing (code problems need tests)")
    pid = _text(record, fields.id, where, required=False) if fields.id else None
    if pid is not None and not pid.strip():
        raise where.error(fields.id, "is empty")
    return Problem(id=pid or default_id, prompt=prompt, answer=answer, reference=reference,
                   tests=tests, source=source, kind=kind)


def _check_unique(problems: list[Problem], wheres: list[_Where], fields: FieldMap) -> None:
    """Evaluation groups samples by id, so two problems sharing one would silently merge."""
    seen: dict[str, int] = {}
    for i, p in enumerate(problems):
        if p.id in seen:
            raise wheres[i].error(fields.id or "id", f"duplicates id '{p.id}' ({wheres[seen[p.id]].text})")
        seen[p.id] = i


def _build(records: Iterable[tuple[_Where, Any]], path: Path, fields: FieldMap, kind: str) -> list[Problem]:
    problems, wheres = [], []
    for index, (where, record) in enumerate(records):
        problems.append(record_to_problem(record, fields, where, f"{path.stem}-{index}", kind, str(path)))
        wheres.append(where)
    if not problems:
        raise UserError(f"{path}: no problems")
    _check_unique(problems, wheres, fields)
    return problems


def _jsonl_records(path: Path) -> Iterator[tuple[_Where, Any]]:
    for number, record in iter_jsonl_numbered(path, torn_tail="error"):
        yield _Where(path, line=number), record


def load_jsonl_problems(path: str | Path, fields: FieldMap | Mapping | None = None,
                        kind: str = "math") -> list[Problem]:
    """One JSON object per line; blank lines are skipped."""
    path = Path(path)
    return _build(_jsonl_records(path), path, FieldMap.from_any(fields), kind)


def _table_records(rows: list[dict], path: Path) -> Iterator[tuple[_Where, Any]]:
    for row, record in enumerate(rows):
        yield _Where(path, row=row), record


def load_parquet_problems(path: str | Path, fields: FieldMap | Mapping | None = None,
                          kind: str = "math") -> list[Problem]:
    """A Parquet table with one problem per row."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow's errors vary by corruption; the user needs the file name
        raise UserError(f"{path}: not a readable Parquet file ({error_line(err)})") from None
    return _build(_table_records(rows, path), path, FieldMap.from_any(fields), kind)


def load_dataset_dir_problems(path: str | Path, fields: FieldMap | Mapping | None = None,
                              kind: str = "math", split: str | None = None) -> list[Problem]:
    """A `Dataset.save_to_disk` / `DatasetDict.save_to_disk` directory.

    A DatasetDict needs `split` unless it holds exactly one split.
    """
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    try:
        data = load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for a damaged directory
        raise UserError(f"{path}: not a readable saved dataset ({error_line(err)})") from None
    if isinstance(data, DatasetDict):
        if split is None and len(data) != 1:
            raise UserError(f"{path}: choose a split with split=... (has {sorted(data)})")
        name = split if split is not None else next(iter(data))
        if name not in data:
            raise UserError(f"{path}: no split '{name}' (has {sorted(data)})")
        data = data[name]
    elif split is not None:
        raise UserError(f"{path}: split='{split}' given but the directory holds a single Dataset")
    return _build(_table_records(data.to_list(), path), path, FieldMap.from_any(fields), kind)


def load_file_problems(source: str | Path, fields: FieldMap | Mapping | None = None, kind: str = "math",
                       split: str | None = None) -> list[Problem]:
    """Dispatch on the path: `.jsonl` file, `.parquet` file or a saved `datasets` directory."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir():
        if not any((path / marker).exists() for marker in ("dataset_dict.json", "dataset_info.json")):
            raise UserError(f"{path}: a directory but not a saved `datasets` dataset (save_to_disk output)")
        return load_dataset_dir_problems(path, fields, kind, split)
    if split is not None:
        raise UserError(f"{path}: split= only applies to saved `datasets` directories")
    if path.suffix == ".jsonl":
        return load_jsonl_problems(path, fields, kind)
    if path.suffix == ".parquet":
        return load_parquet_problems(path, fields, kind)
    raise UserError(f"{path}: unsupported problem file (use .jsonl, .parquet or a saved datasets directory)")


# ---------------------------------------------------------------------------------------------
# Train / held-out split


def stable_unit_hash(key: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) from sha256: the same on every machine and Python run."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_problems(problems: list[Problem], held_out: float | int = 0.2,
                   seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    """(train, held_out) by a stable hash of each problem id; both keep the input order.

    A float `held_out` in [0, 1) is a share: a problem is held out iff its hash is below it, so its
    side depends only on its id and the seed, never on the order or size of the file. An int is a
    count: the problems with the smallest hashes, which is order independent, but adding problems
    to the file may displace some of them into training.
    """
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)):
        raise UserError(f"data.held_out must be a fraction or a count, got {held_out!r}")
    scores = {p.id: stable_unit_hash(p.id, seed) for p in problems}
    if isinstance(held_out, float):
        if not 0.0 <= held_out < 1.0:
            raise UserError(f"data.held_out fraction must be in [0, 1), got {held_out}")
        held_ids = {pid for pid, score in scores.items() if score < held_out}
    else:
        if not 0 <= held_out <= len(problems):
            raise UserError(f"data.held_out count must be in [0, {len(problems)}], got {held_out}")
        held_ids = set(sorted(scores, key=scores.__getitem__)[:held_out])
    train = [p for p in problems if p.id not in held_ids]
    held = [p for p in problems if p.id in held_ids]
    return train, held
