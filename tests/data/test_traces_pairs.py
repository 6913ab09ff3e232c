"""Pair construction (first correct / first incorrect, length filters), OpenR1-shape import, files."""

import json

import pytest

from trajdistill import UserError
from trajdistill.data.traces import (TRACE_COLUMNS, GenerationFields, PairFilter, build_pairs, import_generations,
                                     read_rows, write_rows)


def trace(pid, index, correct, text=None, length=10, prompt_length=20, finished=True):
    return {"problem_id": pid, "sample_index": index, "prompt": f"Q{pid}", "completion": text or f"{pid}-{index}",
            "correct": correct, "length": length, "prompt_length": prompt_length, "finished": finished}


def test_pairs_take_the_first_correct_and_first_incorrect_trace_by_sample_index():
    rows = [trace("a", 3, True), trace("a", 1, False), trace("a", 0, True), trace("a", 2, False),
            trace("b", 0, True), trace("b", 1, True),          # no incorrect: no pair
            trace("c", 0, False)]                              # no correct: no pair
    pairs, sft, stats = build_pairs(rows)
    assert pairs == [{"prompt": "Qa", "chosen": "a-0", "rejected": "a-1", "problem_id": "a",
                      "chosen_length": 10, "rejected_length": 10}]
    assert [s["completion"] for s in sft] == ["a-0", "a-3", "b-0", "b-1"]
    assert stats["problems"] == 3 and stats["pairs"] == 1 and stats["problems_without_pair"] == 2


def test_length_filters_apply_before_choosing_so_a_long_first_trace_is_skipped():
    rows = [trace("a", 0, True, length=500), trace("a", 1, True), trace("a", 2, False),
            trace("a", 3, False, finished=False), trace("b", 0, True, prompt_length=999), trace("b", 1, False)]
    pairs, sft, stats = build_pairs(rows, PairFilter(max_prompt_tokens=100, max_response_tokens=100))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a-1", "a-2")]
    assert [s["completion"] for s in sft] == ["a-1"]
    assert stats["filtered_out"] == 3  # a-0 too long, a-3 truncated, b-0 prompt too long


def test_truncated_traces_can_be_kept():
    rows = [trace("a", 0, True), trace("a", 1, False, finished=False)]
    assert build_pairs(rows)[0] == []
    assert len(build_pairs(rows, PairFilter(drop_truncated=False))[0]) == 1


def test_filters_without_lengths_ask_for_a_tokenizer():
    row = trace("a", 0, True)
    row["length"] = None
    with pytest.raises(UserError, match="tokenizer"):
        build_pairs([row], PairFilter(max_response_tokens=5))


def openr1_records():
    return [
        {"problem": "What is 1+1?", "answer": "2", "generations": ["<think>1+1=2</think> \\boxed{2}", "\\boxed{3}",
                                                                     "\\boxed{2}"],
         "correctness_math_verify": [True, False, True], "correctness_llama": None},
        {"problem": "What is 2*3?", "answer": "6", "generations": ["\\boxed{5}", "\\boxed{6}"],
         "correctness_math_verify": [False, None], "correctness_llama": [False, True]},
        {"problem": "Unjudged", "answer": "1", "generations": ["x"], "correctness_math_verify": None},
    ]


def test_openr1_shaped_records_become_trace_rows_and_pairs(tokenizer):
    rows, stats = import_generations(openr1_records(), instruction="Box it.", tokenizer=tokenizer, source="r1")
    assert stats == {"records_unjudged": 1, "generations_unjudged": 1, "traces": 4}
    assert [(r["problem_id"], r["sample_index"], r["correct"]) for r in rows] == [
        ("r1-0", 0, True), ("r1-0", 1, False), ("r1-0", 2, True), ("r1-1", 0, False)]
    assert rows[0]["prompt"] == "What is 1+1?\n\nBox it." and rows[0]["answer"] == "2"
    assert rows[0]["length"] == len(tokenizer(rows[0]["completion"], add_special_tokens=False)["input_ids"]) + 1
    assert rows[0]["prompt_length"] > 5
    pairs, sft, _ = build_pairs(rows, PairFilter(max_response_tokens=100))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("<think>1+1=2</think> \\boxed{2}", "\\boxed{3}")]
    assert len(sft) == 2


def test_field_mapping_selects_other_columns():
    fields = GenerationFields.from_mapping({"correct": "correctness_llama", "prompt": "problem"})
    rows, _ = import_generations(openr1_records()[1:2], fields)
    assert [r["correct"] for r in rows] == [False, True]
    with pytest.raises(UserError, match="unknown field"):
        GenerationFields.from_mapping({"question": "problem"})


def test_mismatched_flag_list_is_an_error():
    bad = [{"problem": "p", "generations": ["a", "b"], "correctness_math_verify": [True]}]
    with pytest.raises(UserError, match="2 generations but 1"):
        import_generations(bad)


def test_written_sets_are_readable_by_datasets_in_both_formats(tmp_path):
    from datasets import load_dataset

    pairs, sft, _ = build_pairs([trace("a", 0, True), trace("a", 1, False)])
    write_rows(pairs, tmp_path, "pairs")
    for fmt in ("json", "parquet"):
        ext = "jsonl" if fmt == "json" else "parquet"
        ds = load_dataset(fmt, data_files=str(tmp_path / f"pairs.{ext}"), split="train")
        assert ds.column_names[:3] == ["prompt", "chosen", "rejected"] and ds[0]["chosen"] == "a-0"
        assert read_rows(tmp_path / f"pairs.{ext}") == pairs
    assert json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])["rejected"] == "a-1"


@pytest.mark.parametrize("content, message", [
    (b"", r"t\.jsonl: no rows$"),
    (b"\n \n", r"t\.jsonl: no rows$"),
    (b'{"problem_id": "a", "prompt": "caf\xe9"}\n', r"t\.jsonl:1: not valid UTF-8"),
    (b'{"problem_id": "a"}\n[1, 2]\n', r"t\.jsonl:2: expected a JSON object, got list"),
    (b'{"problem_id": "a"}\n{"problem_id": "b", "pro', r"t\.jsonl:2: invalid JSON .*cut-off line"),
])
def test_unusable_row_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        read_rows(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"correct": None}, r"t\.jsonl:3: field 'correct' is missing"),
    ({"correct": "yes"}, r"t\.jsonl:3: field 'correct' must be bool, got str"),
    ({"completion": ["a"]}, r"t\.jsonl:3: field 'completion' must be str, got list"),
    ({"length": "12"}, r"t\.jsonl:3: field 'length' must be int, got str"),
    ({"sample_index": True}, r"t\.jsonl:3: field 'sample_index' must be int, got bool"),
])
def test_trace_rows_are_checked_against_the_trace_columns(tmp_path, change, message):
    rows = [trace("a", 0, True), {**trace("a", 1, False), **change}]
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[0]).encode() + b"\n\n" + json.dumps(rows[1]).encode() + b"\n")
    with pytest.raises(UserError, match=message):
        read_rows(path, TRACE_COLUMNS)


def test_optional_trace_columns_may_be_absent_or_null(tmp_path):
    rows = [{"problem_id": 7, "prompt": "p", "completion": "c", "correct": True, "length": None}]
    write_rows(rows, tmp_path, "t")
    assert read_rows(tmp_path / "t.jsonl", TRACE_COLUMNS) == rows
    assert read_rows(tmp_path / "t.parquet", TRACE_COLUMNS) == rows


def test_a_bad_parquet_row_names_the_row_and_a_damaged_file_is_one_line(tmp_path):
    write_rows([trace("a", 0, True), {**trace("a", 1, False), "correct": None}], tmp_path, "t")
    with pytest.raises(UserError, match=r"t\.parquet row 1: field 'correct' is missing"):
        read_rows(tmp_path / "t.parquet", TRACE_COLUMNS)
    (tmp_path / "bad.parquet").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"bad\.parquet: not a readable Parquet file") as err:
        read_rows(tmp_path / "bad.parquet")
    assert "\n" not in str(err.value)
