"""The command line: help for every subcommand, one-line errors and exit code 2 for user mistakes."""

import subprocess
import sys

import pytest

COMMANDS = ["train", "eval", "report", "traces", "traces generate", "traces pairs", "traces import"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "trajdistill.cli", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    out = run(*command.split(), "--help")
    assert out.returncode == 0 and "Usage" in out.stdout


def test_bad_config_field_is_one_line_and_exit_2(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  lr: -1\n")
    out = run("train", str(cfg))
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "optim.lr" in lines[0] and str(cfg) in lines[0]
    assert "Traceback" not in out.stderr


def test_missing_config_file(tmp_path):
    out = run("train", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr


def test_bad_problem_file_names_file_line_and_field(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text('{"id": "a", "prompt": "1+1?", "answer": "2"}\n{"id": "b", "answer": "3"}\n')
    out = run("eval", "--data", str(data), "--split", "all", "--model", str(tmp_path / "missing-model"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{data}:2" in out.stderr and "prompt" in out.stderr


def test_report_on_a_non_run_directory(tmp_path):
    out = run("report", str(tmp_path))
    assert out.returncode == 2 and "not a run directory" in out.stderr
