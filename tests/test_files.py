"""JSONL and JSON files: strict JSON out, streamed and checked lines in, cut-off tails handled."""

import json
import warnings

import numpy as np
import pytest

from trajdistill import UserError
from trajdistill.files import (
    TornTailWarning,
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    iter_jsonl_numbered,
    json_safe,
    read_jsonl,
    repair_jsonl_tail,
)


def test_json_safe_turns_every_non_finite_float_into_none():
    obj = {"loss": float("nan"), "nested": [1.5, float("inf"), (float("-inf"), 2)], "n": 3, "ok": True,
           "np": np.float32("nan"), "count": np.int64(4), "name": "nan"}
    safe = json_safe(obj)
    assert safe == {"loss": None, "nested": [1.5, None, [None, 2]], "n": 3, "ok": True, "np": None, "count": 4,
                    "name": "nan"}
    assert type(safe["count"]) is int and json.dumps(safe, allow_nan=False)


def test_written_files_are_strict_json(tmp_path):
    row = {"loss": float("nan"), "kl": float("inf"), "lr": 1e-5}
    append_jsonl(tmp_path / "m.jsonl", row)
    atomic_write_jsonl(tmp_path / "r.jsonl", [row])
    atomic_write_json(tmp_path / "s.json", row)

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"wrote {name}"))

    expected = {"loss": None, "kl": None, "lr": 1e-5}
    assert strict((tmp_path / "m.jsonl").read_text()) == expected
    assert strict((tmp_path / "r.jsonl").read_text()) == expected
    assert strict((tmp_path / "s.json").read_text()) == expected


def test_blank_lines_are_skipped_a_bom_accepted_and_line_numbers_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n  \r\n{"a": "caf\xc3\xa9"}\r\n')
    assert list(iter_jsonl_numbered(path)) == [(1, {"a": 1}), (4, {"a": "café"})]


@pytest.mark.parametrize("content, message", [
    (b'{"a": 1}\n{"a": "caf\xe9"}\n', r"r\.jsonl:2: not valid UTF-8"),
    (b'{"a": 1}\n[1, 2]\n', r"r\.jsonl:2: expected a JSON object, got list"),
    (b'{"a": 1}\n"text"\n', r"r\.jsonl:2: expected a JSON object, got str"),
    (b'{"a": 1}\n{"a": \n{"a": 3}\n', r"r\.jsonl:2: invalid JSON \(Expecting value at column 7\)"),
])
def test_a_bad_line_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        read_jsonl(path)
    assert "\n" not in str(err.value)


def test_a_cut_off_last_line_is_skipped_with_a_warning_or_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    with pytest.warns(TornTailWarning, match=r"m\.jsonl:3: skipped a cut-off last line"):
        assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path, torn_tail="ignore") == [{"step": 1}, {"step": 2}]
    with pytest.raises(UserError, match=r"m\.jsonl:3: invalid JSON .*cut-off line"):
        read_jsonl(path, torn_tail="error")


def test_a_cut_inside_a_multibyte_character_is_a_cut_off_line_too(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xc3')
    with pytest.warns(TornTailWarning):
        assert read_jsonl(path) == [{"a": 1}]


def test_a_whole_last_line_without_newline_is_read(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_repair_removes_a_cut_off_tail_and_completes_a_whole_one(tmp_path):
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a"')
    assert repair_jsonl_tail(torn) is True
    assert torn.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    assert repair_jsonl_tail(torn) is False  # already whole

    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(b'{"a": 1}\n{"a": 2}')
    assert repair_jsonl_tail(whole) is True
    assert whole.read_bytes() == b'{"a": 1}\n{"a": 2}\n'

    only = tmp_path / "only.jsonl"
    only.write_bytes(b'{"a": ')
    assert repair_jsonl_tail(only) is True and only.read_bytes() == b""


def test_append_after_a_crash_starts_a_fresh_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_bytes(b'{"key": "a"}\n{"key": "b", "val')  # a writer killed mid-line
    append_jsonl(path, {"key": "c"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"key": "a"}, {"key": "c"}]


def test_a_line_over_the_record_limit_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAJDISTILL_MAX_RECORD_BYTES", "100")
    path = tmp_path / "big.jsonl"
    path.write_text('{"a": 1}\n' + json.dumps({"prompt": "x" * 200}) + "\n")
    with pytest.raises(UserError, match=r"big\.jsonl:2: record is longer than the 100 bytes limit "
                                        r"\(raise it with TRAJDISTILL_MAX_RECORD_BYTES=BYTES\)"):
        read_jsonl(path)
    monkeypatch.setenv("TRAJDISTILL_MAX_RECORD_BYTES", "1000")
    assert len(read_jsonl(path)) == 2


def test_a_multi_gigabyte_single_line_fails_fast(tmp_path):
    path = tmp_path / "giant.jsonl"
    with open(path, "wb") as handle:  # a sparse file: 4 GB of one line, no disk used
        handle.truncate(4 << 30)
    with pytest.raises(UserError, match=r"giant\.jsonl:1: record is longer than the 1 MiB limit"):
        read_jsonl(path)


def test_a_bad_record_limit_setting_is_a_user_error(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n')
    for bad in ("abc", "0", "-5"):
        monkeypatch.setenv("TRAJDISTILL_MAX_RECORD_BYTES", bad)
        with pytest.raises(UserError, match=f"TRAJDISTILL_MAX_RECORD_BYTES must be a positive number of bytes, "
                                            f"got '{bad}'"):
            read_jsonl(path)


def test_an_unreadable_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")
