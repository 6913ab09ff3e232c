import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "eval_shard.py")


@pytest.mark.slow
def test_two_processes_evaluate_halves_and_give_the_single_process_results(tmp_path, tokenizer):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([sys.executable, SCRIPT, str(tmp_path / "one")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
                    SCRIPT, str(tmp_path / "two")], check=True, env=env, timeout=300)
    one, two = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two"))
    rows = [[json.loads(line) for line in (tmp_path / d / "eval.samples.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    assert len(rows[0]) == 7 * (1 + 3)  # every problem: one greedy and n = max(k) sampled responses
    assert rows[0] == rows[1]  # the same responses, sample for sample, in the same order
    assert len({r["response"] for r in rows[0] if r["mode"] == "sampled"}) > 7  # really sampled
    assert one["per_problem"] == two["per_problem"]
    assert one == two
