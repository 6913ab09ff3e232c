"""Runs through the real CLI: SIGKILLed and resumed runs end exactly like uninterrupted ones;
SIGINT stops after the step with a resume command; progress is plain lines when stderr is a pipe."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SFT_ROWS = [{"prompt": f"What is {i} + {i}?", "completion": f"{i} + {i} = {2 * i}. \\boxed{{{2 * i}}}"}
            for i in range(8)]


def write_setup(root: Path, model_dir: str, method: str = "opsd", steps: int = 5, evaluate: bool = False) -> Path:
    data = root / "problems.jsonl"
    with open(data, "w") as f:
        for i in range(12):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"What is {i} + 2?", "answer": str(i + 2),
                                "reference": f"{i} + 2 = {i + 2}, so \\boxed{{{i + 2}}}."}) + "\n")
    method_section = "trd: {fallback: raw}" if method == "trd" else ""
    if method == "sft":
        sft = root / "sft.jsonl"
        sft.write_text("".join(json.dumps(r) + "\n" for r in SFT_ROWS))
        method_section = f"sft: {{dataset: {sft}}}"
    held_out = 2 if evaluate else 0
    n = "" if method == "sft" else "n: 2, "  # sft samples nothing: sampling.n is refused there
    cfg = root / "cfg.yaml"
    cfg.write_text(f"""
method: {method}
{method_section}
model: {{name: {model_dir}}}
lora: {{r: 4, alpha: 8}}
data: {{train: {data}, held_out: {held_out}}}
sampling: {{{n}max_new_tokens: 6, batch_size: 8}}
optim: {{steps: {steps}, problems_per_step: 3, micro_batch_size: 2, lr: 0.01}}
eval: {{before: {str(evaluate).lower()}, after: false, k: [1], greedy: false, max_new_tokens: 4}}
checkpoint: {{every: 1, keep_last: 10}}
""")
    return cfg


def command(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trajdistill.cli", "train", str(cfg), "-o", str(out), *extra]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # PYTHONPATH passes through: the code under test runs


def train(cfg: Path, out: Path, *extra: str):
    return subprocess.run(command(cfg, out, *extra), check=True, env=environment(), capture_output=True,
                          timeout=300)


def logged_steps(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_at(cfg: Path, out: Path, lines: int, *extra: str) -> None:
    """Start a run and SIGKILL its whole process group once metrics.jsonl has `lines` lines: in the
    middle of the next step, or of the checkpoint after the logged one."""
    proc = subprocess.Popen(command(cfg, out, *extra), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while logged_steps(out) < lines and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before logging {lines} steps"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing fields, which differ between any two runs."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not (k.endswith("_s") or k == "tokens_per_s")} for row in rows]


def assert_same_run(a: Path, b: Path, steps: int) -> None:
    final = f"checkpoints/step-{steps}/trainable.safetensors"
    wa, wb = load_file(str(a / final)), load_file(str(b / final))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert [r["step"] for r in metrics(b)] == list(range(1, steps + 1))
    assert metrics(a) == metrics(b)


def kill_resume_and_compare(root: Path, cfg: Path, steps: int, kills: list[int]) -> tuple[Path, Path]:
    """An uninterrupted run, and one SIGKILLed once metrics.jsonl has each of `kills` lines (resuming
    after each kill), then resumed to the end: the two must be the same run."""
    straight, killed = root / "straight", root / "killed"
    train(cfg, straight)
    for i, lines in enumerate(kills):
        kill_at(cfg, killed, lines, *(["--resume"] if i else []))
    assert not (killed / "checkpoints" / f"step-{steps}").exists(), "killed too late to test resume"
    train(cfg, killed, "--resume")
    assert_same_run(straight, killed, steps)
    return straight, killed


@pytest.mark.slow
def test_killed_twice_and_resumed_matches_the_uninterrupted_run(tmp_path, tiny_model_dir):
    kill_resume_and_compare(tmp_path, write_setup(tmp_path, tiny_model_dir), 5, [2, 4])


@pytest.mark.slow
def test_real_smollm2_killed_twice_and_resumed_exports_the_same_merged_weights(tmp_path):
    cfg = write_setup(tmp_path, "smollm2-135m-instruct", steps=4)
    straight, killed = kill_resume_and_compare(tmp_path, cfg, 4, [1, 3])
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (straight, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the merged export, bit for bit


@pytest.mark.slow
def test_an_offline_method_killed_and_resumed_matches_the_uninterrupted_run(tmp_path, tiny_model_dir):
    kill_resume_and_compare(tmp_path, write_setup(tmp_path, tiny_model_dir, method="sft", steps=4), 4, [2])


@pytest.mark.slow
def test_sigint_with_stderr_piped_prints_plain_progress_then_stops_after_the_step(tmp_path, tiny_model_dir):
    cfg = write_setup(tmp_path, tiny_model_dir, steps=20, evaluate=True)
    out = tmp_path / "run"
    proc = subprocess.Popen(command(cfg, out), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while logged_steps(out) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 128 + signal.SIGINT, stderr
    stopped = int(lines[-1].split("interrupted at step ")[1].split(";")[0])
    assert lines[-1] == f"interrupted at step {stopped}; resume with: trajdistill train {cfg} -o {out} --resume"
    assert 1 <= stopped < 20 and (out / "checkpoints" / f"step-{stopped}" / "manifest.json").exists()
    assert logged_steps(out) == stopped
    step_lines = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in step_lines] == [f"{s}/20" for s in range(1, stopped + 1)]
    assert all(" loss " in line and " kl " in line and line.endswith("s") for line in step_lines)
    assert "eval before: 2 held-out problems" in lines and any(l.startswith("eval before: avg@1 ") for l in lines)
    assert "Traceback" not in stderr and "━" not in stderr  # no live bar
    log = (out / "run.log").read_text()
    assert all(line in log for line in step_lines) and f"interrupted at step {stopped}" in log


@pytest.mark.slow
def test_export_is_a_plain_transformers_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    cfg = write_setup(tmp_path, tiny_model_dir)
    train(cfg, tmp_path / "run", "--set", "optim.steps=1")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert not any("lora" in n for n, _ in model.named_parameters())


@pytest.mark.slow
def test_trd_killed_in_stage3_and_resumed_matches_the_uninterrupted_run(tmp_path, tiny_model_dir):
    # the resumed run reuses its saved stage-1/2 rows (same manifest), then stage 3 resumes
    kill_resume_and_compare(tmp_path, write_setup(tmp_path, tiny_model_dir, method="trd", steps=4), 4, [2])


@pytest.mark.slow
def test_trace_generation_killed_and_rerun_writes_the_same_traces(tmp_path, tiny_model_dir):
    cfg = write_setup(tmp_path, tiny_model_dir)
    generate = [sys.executable, "-m", "trajdistill.cli", "traces", "generate", str(cfg), "--problems-per-chunk", "2"]
    subprocess.run([*generate, "-o", str(tmp_path / "straight")], check=True, env=environment(),
                   capture_output=True, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*generate, "-o", str(out)], env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not list((out / "chunks").glob("chunk-000001.jsonl")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "generation ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run([*generate, "-o", str(out)], check=True, env=environment(), capture_output=True, timeout=300)
    assert (out / "traces.jsonl").read_text() == (tmp_path / "straight" / "traces.jsonl").read_text()
