"""Code extraction from model responses (pure string handling, no sandbox)."""

from __future__ import annotations

from trajdistill.verify.code import extract_code, outputs_match


def test_last_python_block_wins():
    response = "First try:\n```python\nx = 1\n```\nBetter:\n```python\nx = 2\n```\nDone."
    assert extract_code(response) == "x = 2\n"


def test_python_block_preferred_over_other_languages():
    response = "```python\nprint(1)\n```\nRun it with:\n```bash\npython main.py\n```"
    assert extract_code(response) == "print(1)\n"


def test_untagged_block_is_used_when_no_python_block():
    assert extract_code("Here:\n```\ndef f():\n    return 1\n```") == "def f():\n    return 1\n"


def test_reasoning_inside_think_is_ignored():
    response = "<think>\n```python\nwrong = True\n```\n</think>\nAnswer:\n```py\nright = True\n```"
    assert extract_code(response) == "right = True\n"


def test_unclosed_final_fence_still_counts():
    assert extract_code("```python\ndef f():\n    return 3\n") == "def f():\n    return 3\n"


def test_bare_code_without_fences_is_taken_whole():
    assert extract_code("def f(x):\n    return x\n") == "def f(x):\n    return x\n"


def test_prose_without_code_gives_none():
    assert extract_code("I think the answer is 42.") is None
    assert extract_code("```python\n\n```") is None


def test_outputs_match_tolerates_whitespace_only():
    assert outputs_match("1 2\n3\n\n", "1 2\n3")
    assert outputs_match("1  2 \r\n3", "1 2\n3")
    assert outputs_match("1\n2\n", "1 2")  # token fallback
    assert not outputs_match("1 2 3", "1 2")
    assert not outputs_match("12", "1 2")
