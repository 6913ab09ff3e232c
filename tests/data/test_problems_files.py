"""Problem files: JSONL, Parquet and saved datasets with a field mapping; errors name file, line, field."""

from __future__ import annotations

import json
import random

import pytest

from trajdistill import UserError
from trajdistill.data import FieldMap, load_problems, split_problems
from trajdistill.records import Problem


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [
    {"id": "a", "question": "What is 1 + 1?", "final": 2, "solution": "1 + 1 = \\boxed{2}"},
    {"id": "b", "question": "What is half of 3?", "final": 1.5},
    {"id": "c", "question": "What is 10 / 2?", "final": "5"},
]
MAPPING = {"prompt": "question", "answer": "final", "reference": "solution"}


def test_jsonl_with_a_field_mapping(tmp_path):
    problems = load_problems(str(write_jsonl(tmp_path / "p.jsonl", ROWS)), fields=MAPPING)
    assert [p.id for p in problems] == ["a", "b", "c"]
    assert [p.answer for p in problems] == ["2", "1.5", "5"]  # numbers become the text a model writes
    assert problems[0].reference == "1 + 1 = \\boxed{2}" and problems[1].reference is None
    assert problems[0].prompt == "What is 1 + 1?" and problems[0].kind == "math"


def test_missing_ids_derive_from_file_name_and_index(tmp_path):
    rows = [{"prompt": "q1", "answer": "1"}, {"prompt": "q2", "answer": "2"}]
    problems = load_problems(str(write_jsonl(tmp_path / "mine.jsonl", rows)))
    assert [p.id for p in problems] == ["mine-0", "mine-1"]


def test_fieldmap_object_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps(ROWS[0]), "", json.dumps(ROWS[1])])
    fields = FieldMap(prompt="question", answer="final", reference=None)
    problems = load_problems(path, fields=fields)
    assert len(problems) == 2 and problems[0].reference is None


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", r"p\.jsonl:2: invalid JSON"),
    (json.dumps({"id": "x", "final": "1"}), r"p\.jsonl:2: field 'question' is missing"),
    (json.dumps({"id": "x", "question": "  ", "final": "1"}), r"p\.jsonl:2: field 'question' is empty"),
    (json.dumps({"id": "x", "question": "q"}), r"p\.jsonl:2: field 'final' is missing"),
    (json.dumps({"id": "x", "question": "q", "final": ""}), r"p\.jsonl:2: field 'final' is empty"),
    (json.dumps({"id": "x", "question": ["q"], "final": "1"}),
     r"p\.jsonl:2: field 'question' must be a string, got list"),
    (json.dumps({"id": "x", "question": "q", "final": True}), r"p\.jsonl:2: field 'final' must be a string, got bool"),
    (json.dumps({"id": "a", "question": "q", "final": "1"}), r"p\.jsonl:2: field 'id' duplicates id 'a'"),
    (json.dumps(["q", "1"]), r"p\.jsonl:2: expected a JSON object"),
])
def test_bad_jsonl_records_name_file_line_and_field(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "p.jsonl", [ROWS[0], bad_line])
    with pytest.raises(UserError, match=message) as err:
        load_problems(str(path), fields=MAPPING)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content, message", [
    (b"", r"p\.jsonl: no problems$"),
    (b"\n\n   \n", r"p\.jsonl: no problems$"),
    (b'{"question": "q", "final": "1"}\n{"question": "caf\xe9", "final": "2"}\n', r"p\.jsonl:2: not valid UTF-8"),
    (b'{"question": "q", "final": "1"}\n{"question": "q2", "fin', r"p\.jsonl:2: invalid JSON .*cut-off line"),
])
def test_unusable_jsonl_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_problems(str(path), fields=MAPPING)
    assert "\n" not in str(err.value)


def test_a_utf8_bom_and_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n\n" + json.dumps(ROWS[0]).encode() + b"\n")
    with pytest.raises(UserError, match=r"p\.jsonl:3: field 'id' duplicates id 'a' \(.*p\.jsonl:1\)"):
        load_problems(str(path), fields=MAPPING)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    assert [p.id for p in load_problems(str(path), fields=MAPPING)] == ["a"]


def test_a_record_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "p.jsonl", [ROWS[0], {"id": "big", "question": "x" * 3_000_000, "final": "1"}])
    with pytest.raises(UserError, match=r"p\.jsonl:2: record is longer than the 1 MiB limit"):
        load_problems(str(path), fields=MAPPING)
    monkeypatch.setenv("TRAJDISTILL_MAX_RECORD_BYTES", str(4 << 20))
    assert len(load_problems(str(path), fields=MAPPING)[1].prompt) == 3_000_000


def test_empty_tables_and_damaged_tables_are_user_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    pq.write_table(pa.Table.from_pylist([], schema=pa.schema([("prompt", pa.string())])), tmp_path / "e.parquet")
    with pytest.raises(UserError, match=r"e\.parquet: no problems$"):
        load_problems(str(tmp_path / "e.parquet"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=r"bad\.parquet: not a readable Parquet file"):
        load_problems(str(tmp_path / "bad.parquet"))
    # `datasets` itself cannot reload a set saved with no rows (zero shards); either way, one line.
    Dataset.from_dict({"prompt": [], "answer": []}).save_to_disk(str(tmp_path / "empty_set"))
    with pytest.raises(UserError, match=r"empty_set: (no problems|not a readable saved dataset)"):
        load_problems(str(tmp_path / "empty_set"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "dataset_info.json").write_text("{")
    with pytest.raises(UserError, match=r"broken: not a readable saved dataset") as err:
        load_problems(str(tmp_path / "broken"))
    assert "\n" not in str(err.value)


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q1", "final": "3"}, {"question": "q2", "final": "4"}]), path)
    problems = load_problems(str(path), fields={"prompt": "question", "answer": "final"})
    assert [(p.id, p.prompt, p.answer) for p in problems] == [("p-0", "q1", "3"), ("p-1", "q2", "4")]


def test_parquet_bad_row_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q1", "answer": "3"}, {"prompt": "q2", "answer": None}]), path)
    with pytest.raises(UserError, match=r"p\.parquet row 1: field 'answer' is missing"):
        load_problems(str(path))


def test_saved_dataset_directory_and_its_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {"prompt": ["q1", "q2"], "answer": ["1", "2"]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    assert [p.prompt for p in load_problems(str(tmp_path / "single"))] == ["q1", "q2"]

    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict({"prompt": ["t"], "answer": ["9"]})}
                ).save_to_disk(str(tmp_path / "dict"))
    assert [p.answer for p in load_problems(str(tmp_path / "dict"), split="test")] == ["9"]
    with pytest.raises(UserError, match="choose a split"):
        load_problems(str(tmp_path / "dict"))


def test_unusable_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_problems(str(tmp_path / "missing.jsonl"))
    (tmp_path / "p.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported"):
        load_problems(str(tmp_path / "p.csv"))
    with pytest.raises(UserError, match="unknown key"):
        load_problems(str(write_jsonl(tmp_path / "p.jsonl", ROWS)), fields={"question": "prompt"})


# --- split -----------------------------------------------------------------------------------

def _problems(count: int) -> list[Problem]:
    return [Problem(id=f"q{i}", prompt=f"question {i}", answer=str(i)) for i in range(count)]


def test_split_is_disjoint_complete_and_near_the_fraction():
    problems = _problems(2000)
    train, held = split_problems(problems, held_out=0.2, seed=0)
    assert {p.id for p in train}.isdisjoint(p.id for p in held)
    assert len(train) + len(held) == 2000
    assert 340 < len(held) < 460
    assert [p.id for p in held] == [p.id for p in problems if p in held]  # input order kept


def test_split_membership_ignores_order_and_file_size():
    problems = _problems(500)
    _, held = split_problems(problems, held_out=0.3, seed=7)
    shuffled = problems[:]
    random.Random(0).shuffle(shuffled)
    _, held_shuffled = split_problems(shuffled, held_out=0.3, seed=7)
    _, held_bigger = split_problems(_problems(1500), held_out=0.3, seed=7)
    ids = {p.id for p in held}
    assert {p.id for p in held_shuffled} == ids
    assert {p.id for p in held_bigger if int(p.id[1:]) < 500} == ids


def test_split_depends_on_the_seed_and_accepts_a_count():
    problems = _problems(300)
    a = {p.id for p in split_problems(problems, 0.5, seed=0)[1]}
    b = {p.id for p in split_problems(problems, 0.5, seed=1)[1]}
    assert a != b
    train, held = split_problems(problems, held_out=25, seed=0)
    assert len(held) == 25 and len(train) == 275


@pytest.mark.parametrize("held_out", [1.0, -0.1, 301, True, "0.2"])
def test_split_rejects_bad_held_out(held_out):
    with pytest.raises(UserError):
        split_problems(_problems(300), held_out=held_out)
