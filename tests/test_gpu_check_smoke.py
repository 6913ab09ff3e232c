"""`benchmarks/gpu_check.py --tiny --device cpu`: the GPU check's own code path on a tiny Qwen3, so
that the script a GPU user runs is known to work up to the device."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_runs_its_four_configurations_and_passes_its_checks_on_a_tiny_model():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu"], capture_output=True,
                          text=True, env=env, timeout=900, cwd=SCRIPT.parents[1])
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    assert "FAIL" not in out and "all checks passed" in out
    for lora in ("LoRA", "full"):
        for checkpointing in ("off", "on"):
            label = f"[{lora}, gradient checkpointing {checkpointing}]"
            for check in ("teacher KL at the student's own prompt", "finite losses", "trained weights changed"):
                assert f"PASS {label} {check}" in out, (label, check, out)
            assert f"{label} N=" in out and "rollout tokens/s" in out
