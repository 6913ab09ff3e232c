"""The command line: help for every subcommand, one-line errors and exit code 2 for user mistakes."""

import json
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


# --- bad data: one line on stderr naming the file and line (or field), exit 2, before any model loads

def one_error_line(out):
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


GOOD = b'{"id": "a", "prompt": "1+1?", "answer": "2"}\n'


@pytest.mark.parametrize("content, expected", [
    (GOOD + b'{"id": "b", "prompt": "caf\xe9", "answer": "3"}\n', "{path}:2: not valid UTF-8"),
    (b"", "{path}: no problems"),
    (b"\n\n", "{path}: no problems"),
    (GOOD + b"[1, 2]\n", "{path}:2: expected a JSON object, got list"),
    (GOOD + b'{"id": "b", "prompt": {"text": "q"}, "answer": "3"}\n', "{path}:2: field 'prompt' must be a string"),
    (GOOD + b"\n" + GOOD, "{path}:3: field 'id' duplicates id 'a' ({path}:1)"),
    (GOOD + b'{"id": "b", "prompt": "1+', "{path}:2: invalid JSON"),
    (GOOD + b'{"id": "b", "prompt": "' + b"x" * (2 << 20) + b'", "answer": "1"}\n',
     "{path}:2: record is longer than the 1 MiB limit (raise it with TRAJDISTILL_MAX_RECORD_BYTES=BYTES)"),
], ids=["not-utf8", "empty", "blank-only", "not-object", "field-type", "duplicate-id", "cut-off", "too-long"])
def test_eval_names_the_bad_problem_file_line(tmp_path, content, expected):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    line = one_error_line(run("eval", "--data", str(path), "--split", "all", "--model", str(tmp_path / "no-model")))
    assert expected.format(path=path) in line


@pytest.mark.parametrize("source, expected", [
    ("builtin:nope", "unknown builtin set 'nope'"),
    ("builtin:arith?digits=abc", "option 'digits': expected an integer, got 'abc'"),
    ("builtin:arith?colour=red", "unknown option(s) ['colour']"),
    ("builtin:arith?ops=pow", "option 'ops': unknown value(s) ['pow']"),
    ("builtin:code?level=easy", "unknown option(s) ['level']"),
])
def test_eval_names_the_bad_builtin_option(tmp_path, source, expected):
    line = one_error_line(run("eval", "--data", source, "--split", "all", "--model", str(tmp_path / "no-model")))
    assert source in line and expected in line


def test_eval_refuses_a_k_of_zero_before_loading_anything(tmp_path):
    line = one_error_line(run("eval", "--data", "builtin:arith", "--k", "0", "--model", str(tmp_path / "no-model")))
    assert "--k values must be at least 1" in line


TRACE = {"problem_id": "a", "sample_index": 0, "prompt": "Q", "completion": "A", "correct": True}


@pytest.mark.parametrize("content, expected", [
    (json.dumps(TRACE).encode() + b'\n{"problem_id": "a", "completion": "\xff"}\n', "{path}:2: not valid UTF-8"),
    (b"", "{path}: no rows"),
    (json.dumps(TRACE).encode() + b'\n"a string"\n', "{path}:2: expected a JSON object, got str"),
    (json.dumps(TRACE).encode() + b"\n\n" + json.dumps({**TRACE, "correct": "no"}).encode() + b"\n",
     "{path}:3: field 'correct' must be bool, got str"),
    (json.dumps({k: v for k, v in TRACE.items() if k != "completion"}).encode() + b"\n",
     "{path}:1: field 'completion' is missing"),
    (json.dumps(TRACE).encode() + b'\n{"problem_id": "a", "comp', "{path}:2: invalid JSON"),
], ids=["not-utf8", "empty", "not-object", "field-type", "field-missing", "cut-off"])
def test_traces_pairs_names_the_bad_trace_file_line(tmp_path, content, expected):
    path = tmp_path / "traces.jsonl"
    path.write_bytes(content)
    line = one_error_line(run("traces", "pairs", str(path), "--out", str(tmp_path / "out")))
    assert expected.format(path=path) in line
    assert not (tmp_path / "out").exists()


def test_traces_pairs_accepts_a_bom_and_blank_lines(tmp_path):
    path = tmp_path / "traces.jsonl"
    wrong = {**TRACE, "sample_index": 1, "completion": "B", "correct": False}
    path.write_bytes(b"\xef\xbb\xbf\n" + json.dumps(TRACE).encode() + b"\n\n" + json.dumps(wrong).encode() + b"\n\n")
    out = run("traces", "pairs", str(path), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    pairs = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("A", "B")]


def test_report_warns_in_one_line_about_a_cut_off_metrics_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("method: opd\n")
    (run_dir / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    out = run("report", str(run_dir), "--out", str(tmp_path / "report"))
    assert out.returncode == 0 and "Traceback" not in out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {run_dir}/metrics.jsonl:2: skipped a cut-off last line (an interrupted write)"]


# --- runs: the resume guard, and a run directory that exists before the model loads

def test_resume_with_a_changed_experiment_is_one_line_naming_the_fields(tmp_path):
    from trajdistill.config import load_config, save_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("optim: {lr: 0.001}\n")
    (tmp_path / "run").mkdir()
    save_config(load_config(cfg, [f"output_dir={tmp_path / 'run'}"]), tmp_path / "run" / "config.yaml")
    out = run("train", str(cfg), "-o", str(tmp_path / "run"), "--set", "optim.lr=0.002",
              "--set", "eval.every=3", "--resume")
    line = one_error_line(out)
    assert "optim.lr 0.001 -> 0.002" in line and "optim.steps" not in line.split("(only")[0]
    assert "eval.every" not in line.split("(only")[0]  # an allowed change is not listed


def test_the_run_directory_has_its_config_and_log_before_the_model_loads(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{name: {tmp_path / 'no-such-model'}}}\noutput_dir: {tmp_path / 'run'}\n")
    out = run("train", str(cfg))
    assert out.returncode != 0  # the model does not exist ...
    saved = (tmp_path / "run" / "config.yaml").read_text()  # ... but the run directory was set up first
    assert str(tmp_path / "no-such-model") in saved
    log = (tmp_path / "run" / "run.log").read_text()
    assert "starting opsd on builtin:arith-mix" in log and f"loading {tmp_path / 'no-such-model'}" in log


def test_a_full_disk_anywhere_is_one_line_naming_the_file(capsys):
    import errno

    import typer

    from trajdistill.cli_support import user_errors

    @user_errors
    def write():
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/eval/after.json")

    with pytest.raises(typer.Exit) as exit_:
        write()
    assert exit_.value.exit_code == 1
    assert capsys.readouterr().err == ("error: no space left on device writing runs/x/eval/after.json; "
                                       "free some space and run the command again\n")


def test_eval_takes_config_overrides_and_names_a_bad_one(tmp_path):
    line = one_error_line(run("eval", "--data", "builtin:arith", "--model", str(tmp_path / "no-model"),
                              "--set", "sampling.backend=vlm"))
    assert "sampling.backend" in line
    line = one_error_line(run("eval", "--data", "builtin:arith", "--model", str(tmp_path / "no-model"),
                              "--set", "eval.grading=lenient", "--set", "data.held_out=0.5", "--limit", "2"))
    assert "no-model" in line  # the overrides were accepted: it got as far as loading the model


# --- plugins from the command line, and plain output in a pipe

PLUGIN = '''
from pydantic import Field

from trajdistill.methods import register
from trajdistill.methods.onpolicy import OnPolicyDistillation, OnPolicyOptions


class ScaledOptions(OnPolicyOptions):
    scale: float = Field(1.0, gt=0.0)


class ScaledKL(OnPolicyDistillation):
    Options = ScaledOptions
    fixed_setting = "opsd"

    def weights(self, seqs, batch, totals):
        w, z = super().weights(seqs, batch, totals)
        return w * self.opts.scale, z


register("scaled-kl", ScaledKL)
'''


def test_a_plugin_method_trains_from_the_cli_and_the_table_is_not_folded_in_a_pipe(tmp_path, tiny_model_dir):
    import os

    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    data = tmp_path / ("arithmetic-problems-with-a-name-long-enough-to-pass-eighty-columns-" + "x" * 40 + ".jsonl")
    data.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i),
                                        "reference": f"{i} + {i} = {2 * i}"}) + "\n" for i in range(8)))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"method: scaled-kl\nscaled-kl: {{scale: 0.5, diagnostics: false}}\n"
                   f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {data}, held_out: 2}}\n"
                   "eval: {k: [1], greedy: false, max_new_tokens: 3}\nsampling: {n: 2, max_new_tokens: 4}\n"
                   "lora: {r: 4, alpha: 8}\noptim: {steps: 1, problems_per_step: 2}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("COLUMNS", None)
    without = subprocess.run([sys.executable, "-m", "trajdistill.cli", "train", str(cfg)], capture_output=True,
                             text=True, timeout=120, env=env)
    assert one_error_line(without).startswith(f"error: {cfg}: field 'method': unknown method 'scaled-kl'")
    out = subprocess.run([sys.executable, "-m", "trajdistill.cli", "train", str(cfg), "--plugin", "my_plugin",
                          "-o", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    # stderr is a pipe: the table's title line (longer than 80 columns) and its rows are whole lines
    title = f"scaled-kl on {data} (2 held-out problems)"
    assert any(line.startswith(title) for line in out.stderr.splitlines()), out.stderr
    rows = [line for line in out.stderr.splitlines() if line.startswith("|")]
    assert [row.split("|")[1].strip() for row in rows] == ["run", "---", "before", "after", "change (paired)"]
    assert all(row.endswith("|") for row in rows)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert saved.startswith("plugins:\n- my_plugin\n")  # the run's config names the plugin it needs
    assert "scale: 0.5" in saved


BACKEND_PLUGIN = r'''
from trajdistill.records import Rollout
from trajdistill.rollout.sampler import register_sampler


class Canned:
    """Answers sample j of every prompt with j, boxed: right where j is the problem's answer."""

    def __init__(self, model, tokenizer, **options):
        self.tokenizer = tokenizer

    def sample(self, prompts, params, problem_ids=None):
        return [Rollout(problem_id=pid, prompt_ids=list(prompt), response_ids=[1, 2], text=f"\\boxed{{{j}}}",
                        sample_index=j) for prompt, pid in zip(prompts, problem_ids) for j in range(params.n)]

    def sync(self, model, version=None):
        pass

    def close(self):
        pass


register_sampler("canned", Canned)
'''


def test_traces_generate_takes_a_plugins_sampler_backend(tmp_path, tiny_model_dir):
    import os

    (tmp_path / "canned_backend.py").write_text(BACKEND_PLUGIN)
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"What is {i} + 0?", "answer": str(i),
                                        "reference": f"{i} + 0 = {i}"}) + "\n" for i in range(3)))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"method: sft\nmodel: {{name: {tiny_model_dir}}}\ndata: {{train: {data}, held_out: 0}}\n"
                   "sampling: {backend: canned, n: 2}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trajdistill.cli", "traces", "generate", str(cfg), "--out", str(tmp_path / "out")]
    without = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert "field 'sampling.backend': unknown sampling backend 'canned'" in one_error_line(without)
    out = subprocess.run(command + ["--plugin", "canned_backend"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "traces.jsonl").read_text().splitlines()]
    assert [(r["problem_id"], r["completion"], r["correct"]) for r in rows] == [
        ("p0", "\\boxed{0}", True), ("p0", "\\boxed{1}", False), ("p1", "\\boxed{0}", False),
        ("p1", "\\boxed{1}", True), ("p2", "\\boxed{0}", False), ("p2", "\\boxed{1}", False)]


def test_the_run_log_ends_with_the_error_that_stopped_the_run(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{train: {tmp_path / 'missing.jsonl'}}}\noutput_dir: {tmp_path / 'run'}\n")
    line = one_error_line(run("train", str(cfg)))
    assert "missing.jsonl: no such file or directory" in line
    log = (tmp_path / "run" / "run.log").read_text().splitlines()
    assert "starting opsd" in log[0] and log[-1].endswith(line)


def test_a_plugin_that_cannot_be_imported_is_named(tmp_path):
    line = one_error_line(run("train", "configs/demo.yaml", "--plugin", "no_such_plugin_module"))
    assert "field 'plugins': cannot import plugin 'no_such_plugin_module'" in line
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("plugins: [no_such_plugin_module]\n")
    line = one_error_line(run("eval", "--config", str(cfg)))
    assert f"{cfg}: field 'plugins': cannot import plugin 'no_such_plugin_module'" in line


def test_only_process_0_of_a_multi_process_run_prints(tmp_path):
    import os

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  lr: -1\n")
    outs = {rank: subprocess.run([sys.executable, "-m", "trajdistill.cli", "train", str(cfg)], capture_output=True,
                                 text=True, timeout=120, env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"})
            for rank in (0, 1)}
    assert "optim.lr" in one_error_line(outs[0])
    assert outs[1].returncode == 2 and outs[1].stderr == "" and outs[1].stdout == ""
