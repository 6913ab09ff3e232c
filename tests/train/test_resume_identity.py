"""A run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run."""

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


def write_setup(root: Path, model_dir: str) -> Path:
    data = root / "problems.jsonl"
    with open(data, "w") as f:
        for i in range(12):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"What is {i} + 2?", "answer": str(i + 2),
                                "reference": f"{i} + 2 = {i + 2}, so \\boxed{{{i + 2}}}."}) + "\n")
    cfg = root / "cfg.yaml"
    cfg.write_text(f"""
method: opsd
model: {{name: {model_dir}}}
lora: {{r: 4, alpha: 8}}
data: {{train: {data}, held_out: 0}}
sampling: {{n: 2, max_new_tokens: 6, batch_size: 8}}
optim: {{steps: 5, problems_per_step: 3, micro_batch_size: 2, lr: 0.01}}
eval: {{before: false, after: false}}
checkpoint: {{every: 1, keep_last: 10}}
""")
    return cfg


def train(cfg: Path, out: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "trajdistill.cli", "train", str(cfg), "-o", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    cfg = write_setup(tmp_path, tiny_model_dir)
    train(cfg, tmp_path / "straight")

    proc = train(cfg, tmp_path / "killed", wait=False)
    ckpt = tmp_path / "killed" / "checkpoints" / "step-1" / "state.json"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), "the run never reached step 1"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "checkpoints" / "step-5").exists(), "killed too late to test resume"
    train(cfg, tmp_path / "killed", "--resume")

    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-5" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoints" / "step-5" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_export_is_a_plain_transformers_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    cfg = write_setup(tmp_path, tiny_model_dir)
    train(cfg, tmp_path / "run", "--set", "optim.steps=1")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert not any("lora" in n for n, _ in model.named_parameters())
