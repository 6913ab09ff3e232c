"""Reading and writing JSONL and JSON safely.

Writes are atomic (readers, and a resumed run, never see half a file) and strict JSON: NaN and
infinities become `null`, so `jq` and other strict parsers read every file trajdistill writes.

Reads stream line by line and stop at the first bad line with a `UserError` naming the file and
line. Two policies apply to every JSONL file trajdistill reads:

- A line longer than `max_record_bytes()` (1 MiB by default, or the TRAJDISTILL_MAX_RECORD_BYTES
  environment variable) is refused, after reading only that many bytes of it.
- A cut-off last line (no final newline and not valid JSON: what a killed writer leaves) is a
  `TornTailWarning` and is skipped, or an error with `torn_tail="error"`; `repair_jsonl_tail`
  removes it, and `append_jsonl` does so before appending. A bad line anywhere else is an error.
"""

from __future__ import annotations

import gzip
import json
import math
import numbers
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from trajdistill import UserError

MAX_RECORD_BYTES_VARIABLE = "TRAJDISTILL_MAX_RECORD_BYTES"
DEFAULT_MAX_RECORD_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"
TornTail = Literal["warn", "ignore", "error"]


class TornTailWarning(UserWarning):
    """A JSONL file ends in a cut-off line, which was skipped."""


def max_record_bytes() -> int:
    """The longest JSONL line trajdistill reads, in bytes (newline included)."""
    raw = os.environ.get(MAX_RECORD_BYTES_VARIABLE)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_RECORD_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"{MAX_RECORD_BYTES_VARIABLE} must be a positive number of bytes, got '{raw}'")
    return value


def _limit_text(limit: int) -> str:
    return f"{limit // (1 << 20)} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"


# ---------------------------------------------------------------------------------------------
# Writing


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN / infinity (nested in dicts, lists and tuples) replaced by None, and
    numpy numbers as plain Python ones."""
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, numbers.Integral):  # numpy integers would otherwise be written as strings
        return int(obj)
    if isinstance(obj, numbers.Real):  # float, numpy floats
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """json.dumps that never writes NaN/Infinity (they become null); unknown objects become str."""
    return json.dumps(json_safe(obj), allow_nan=False, default=str, **kwargs)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, dumps_strict(obj, indent=2) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(dumps_strict(r) + "\n" for r in rows))


def append_jsonl(path: str | Path, row: dict) -> None:
    """One whole line per call, flushed: a crash loses at most the line being written.

    A cut-off last line left by an earlier crash is removed first, so the new row starts a line
    of its own instead of being glued to the fragment.
    """
    line = (dumps_strict(row) + "\n").encode("utf-8")
    if Path(path).exists():
        repair_jsonl_tail(path)
    with open(path, "ab") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------
# Reading


def error_line(err: BaseException) -> str:
    """A library's error message cut to its first line, for a one-line UserError about a file."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def iter_jsonl_numbered(path: str | Path, *, torn_tail: TornTail = "warn") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line, streamed; a UTF-8 BOM is accepted.

    Raises UserError `FILE:LINE: ...` for a line that is not UTF-8, not JSON, not an object or
    longer than `max_record_bytes()`. `torn_tail` says what a cut-off last line does: "warn"
    (skip it with a TornTailWarning), "ignore" (skip it silently) or "error".
    """
    path = Path(path)
    limit = max_record_bytes()
    try:
        handle = gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    with handle:
        number = 0
        while True:
            try:
                raw = handle.readline(limit + 1)
            except OSError as err:
                raise UserError(f"{path}: cannot read ({err.strerror})") from None
            if not raw:
                return
            number += 1
            if len(raw) > limit:
                raise UserError(f"{path}:{number}: record is longer than the {_limit_text(limit)} limit "
                                f"(raise it with {MAX_RECORD_BYTES_VARIABLE}=BYTES)")
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            last = not raw.endswith(b"\n")  # only the end of the file lacks a newline here
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                if last and _torn(path, number, torn_tail, "cut inside a character"):
                    return
                raise UserError(f"{path}:{number}: not valid UTF-8 (byte {err.start + 1} of the line)") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text.rstrip("\r\n"))  # so columns count within the line
            except json.JSONDecodeError as err:
                reason = f"{err.msg} at column {err.colno}"
                if last and _torn(path, number, torn_tail, reason):
                    return
                raise UserError(f"{path}:{number}: invalid JSON ({reason})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def _torn(path: Path, number: int, policy: TornTail, reason: str) -> bool:
    """True if a cut-off last line is to be skipped; raises for policy "error"."""
    if policy == "error":
        raise UserError(f"{path}:{number}: invalid JSON ({reason}); the file ends in a cut-off line")
    if policy == "warn":
        warnings.warn(TornTailWarning(f"{path}:{number}: skipped a cut-off last line (an interrupted write)"),
                      stacklevel=3)
    return True


def iter_jsonl(path: str | Path, *, torn_tail: TornTail = "warn") -> Iterator[dict]:
    """The objects of a JSONL file, streamed (see `iter_jsonl_numbered`)."""
    for _, record in iter_jsonl_numbered(path, torn_tail=torn_tail):
        yield record


def read_jsonl(path: str | Path, *, torn_tail: TornTail = "warn") -> list[dict]:
    """Every object of a JSONL file (see `iter_jsonl_numbered` for the errors and `torn_tail`)."""
    return list(iter_jsonl(path, torn_tail=torn_tail))


def repair_jsonl_tail(path: str | Path) -> bool:
    """Make a JSONL file end in a newline; True if the file changed.

    A last line that is a whole JSON value only lacks its newline, which is added; one that is
    not (a cut-off write) is removed by a single truncate, so no byte before it changes.
    """
    path = Path(path)
    with open(path, "rb+") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return False
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return False
        start = _last_line_start(handle, end)
        handle.seek(start)
        tail = handle.read(end - start)
        if start == 0 and tail.startswith(BOM):
            tail = tail[len(BOM):]
        try:
            json.loads(tail.decode("utf-8"))
            whole = True
        except (UnicodeDecodeError, json.JSONDecodeError):
            whole = False
        if whole:
            handle.seek(end)
            handle.write(b"\n")
        else:
            handle.truncate(start)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _last_line_start(handle, end: int) -> int:
    """Offset just after the last newline before `end`; refuses a last line over the record limit."""
    limit = max_record_bytes()
    position = end
    while position > 0:
        step = min(1 << 16, position)
        position -= step
        handle.seek(position)
        found = handle.read(step).rfind(b"\n")
        if found >= 0:
            return position + found + 1
        if end - position > limit:
            raise UserError(f"{handle.name}: the last line is longer than the {_limit_text(limit)} limit "
                            f"(raise it with {MAX_RECORD_BYTES_VARIABLE}=BYTES)")
    return 0
