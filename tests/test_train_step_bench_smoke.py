"""`benchmarks/train_step.py` against each TRL anchor, at a tiny size: both sides train on the same
prompt token ids (SDFT: the same privileged teacher prompt too) and make the forced number of
completion tokens, so the benchmark's comparison is like for like. It wraps TRL methods
(generation, batch assembly) to count tokens; a TRL release that renames them fails here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


@pytest.mark.slow
@pytest.mark.parametrize("anchor", ["sdft", "distillation"])
def test_train_step_benchmark_compares_like_for_like(anchor):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--anchor", anchor, "--n", "4", "--tokens", "4",
                           "--steps", "1", "--threads", "1", "--no-diag-row"],
                          capture_output=True, text=True, env=env, timeout=900, cwd=SCRIPT.parents[1])
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "Same student prompt token ids on both sides: yes; same teacher prompt token ids: yes" in out, out
    assert "completion tokens per step: ours 32, TRL 32 (expected 32)" in out, out
    assert re.search(r"CPU: .+ \(.*\), \d+ CPUs; TRL 1\.16", out), out
    name = {"sdft": "TRL SDFTTrainer", "distillation": "TRL DistillationTrainer"}[anchor]
    header = next(line for line in out.splitlines() if line.startswith("| | ours:"))
    assert name in header, header
    teacher_row = next(line for line in out.splitlines() if line.startswith("| prompt tokens/step, teacher"))
    ours_teacher, trl_teacher = (float(c) for c in teacher_row.strip("|").split("|")[1:3])
    assert ours_teacher == trl_teacher > 0
