import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_update.py")


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_two_processes_give_the_single_process_update(tmp_path, aggregation, tokenizer):
    single = tmp_path / "single" / "w.safetensors"
    double = tmp_path / "double" / "w.safetensors"
    single.parent.mkdir()
    double.parent.mkdir()
    subprocess.run([sys.executable, SCRIPT, str(single), aggregation], check=True, env=_env(), timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"
                    if aggregation == "token" else "29534", SCRIPT, str(double), aggregation],
                   check=True, env=_env(), timeout=300)
    a, b = load_file(str(single)), load_file(str(double))
    assert a.keys() == b.keys() and len(a) > 0
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5)
        moved += int(a[k].abs().sum() > 0)
    assert moved > 0
