"""Reading and writing trace, pair and SFT row sets (.jsonl, .parquet, saved `datasets` directories).

`read_rows` also reads a `trajdistill traces` output folder: its traces.jsonl, or, while it is still
being generated, its finished chunks (`completed_rows`). `write_rows` writes both formats atomically.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from trajdistill import UserError
from trajdistill.files import atomic_write_jsonl, error_line, iter_jsonl_numbered, read_jsonl


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


def completed_rows(out_dir: str | Path) -> list[dict]:
    """Every row of every finished chunk, in chunk order (chunks are written whole, so a cut-off
    line is damage, not an interrupted write)."""
    chunks = sorted((Path(out_dir) / "chunks").glob("chunk-*.jsonl"))
    return [row for chunk in chunks for row in read_jsonl(chunk, torn_tail="error")]
