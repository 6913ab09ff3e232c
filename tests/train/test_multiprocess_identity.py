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


def _single_and_double(tmp_path, port: int, *args: str) -> tuple[dict, dict]:
    single = tmp_path / "single" / "w.safetensors"
    double = tmp_path / "double" / "w.safetensors"
    single.parent.mkdir()
    double.parent.mkdir()
    subprocess.run([sys.executable, SCRIPT, str(single), *args], check=True, env=_env(), timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                    SCRIPT, str(double), *args], check=True, env=_env(), timeout=300)
    return load_file(str(single)), load_file(str(double))


def _assert_same_update(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    grads = [k for k in a if k.startswith("grad0.")]
    assert grads and any(a[k].abs().sum() > 0 for k in grads)
    for k in grads:  # the full-batch gradient, however the batch is split
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-4)  # fp32 summation order
    # rtol 1e-5: several processes always take the prefix-shared path (they must agree on it), a
    # single process only where prompts repeat: the same loss up to fp32 summation order
    torch.testing.assert_close(a["loss"], b["loss"], atol=1e-7, rtol=1e-5)
    # the logged per-token means cover the batch's tokens once each (no filler counted)
    torch.testing.assert_close(a["kl_means"], b["kl_means"], atol=1e-7, rtol=1e-5, equal_nan=True)  # nan: no such rows
    # Adam's first steps are ~lr * sign(g): float noise in near-zero gradients may flip a few
    # elements, so the weights after two steps agree to a fraction of the learning rate (0.01).
    for k in (k for k in a if k.startswith("weight.")):
        torch.testing.assert_close(a[k], b[k], atol=1e-3, rtol=0)
    for run in (a, b):  # resuming from the step-1 checkpoint repeats step 2 exactly
        for k in (k for k in run if k.startswith("weight.")):
            torch.testing.assert_close(run["resumed." + k[len("weight."):]], run[k], atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_two_processes_give_the_single_process_update(tmp_path, aggregation, tokenizer):
    a, b = _single_and_double(tmp_path, 29533 if aggregation == "token" else 29534, aggregation)
    _assert_same_update(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("weights,port", [("lora", 29535), ("full", 29536), ("full-untied", 29546)])
def test_fsdp_two_processes_give_the_single_process_update_checkpoint_and_export(tmp_path, weights, port, tokenizer):
    """FSDP2 shards the model over 2 gloo processes; the fused loss reads the LM head, whose
    gradient `full` also checks, tied to the embedding or not (`full-untied`, as Qwen3-8B: its
    gradient crashed backward before the head was kept in the embedding's unit). Checkpoints and
    `final/` are gathered whole: the same files."""
    a, b = _single_and_double(tmp_path, port, "token", "fsdp", weights)
    assert any(k.startswith("grad0.") and "embed_tokens" in k for k in a) == weights.startswith("full")
    assert any(k.startswith("grad0.") and "lm_head" in k for k in a) == (weights == "full-untied")
    _assert_same_update(a, b)
    single = load_file(str(tmp_path / "single" / "run" / "final" / "model.safetensors"))
    double = load_file(str(tmp_path / "double" / "run" / "final" / "model.safetensors"))
    # a tied head is the embedding: not saved twice
    assert single.keys() == double.keys() and ("lm_head.weight" in single) == (weights == "full-untied")
    for k in single:
        torch.testing.assert_close(single[k], double[k], atol=1e-3, rtol=0)
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "double" / "run" / "final")
    ids = torch.tensor([[12, 345, 678, 910]])
    assert torch.isfinite(exported(input_ids=ids).logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("strategy,rows,port", [("fsdp", "5", 29537), ("fsdp", "1", 29538), ("ddp", "1", 29539),
                                                ("fsdp", "0,1", 29540)])
def test_uneven_processes_stay_in_step_and_give_the_single_process_update(tmp_path, strategy, rows, port, tokenizer):
    """5 sequences split 3 / 2 give the processes 2 micro-batches against 1; 1 sequence leaves one
    process with none; `0,1` gives one process a micro-batch whose responses are all one token (the
    prefix-shared path needs no response pass there, the other process's does). Every process runs
    the same forwards (under FSDP every forward gathers the sharded weights: a process running fewer
    hung the other), and the update is still the full batch's."""
    a, b = _single_and_double(tmp_path, port, "token", strategy, "lora", rows)
    _assert_same_update(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("method,port", [("renio", 29541), ("topd", 29542), ("renio-opd", 29545)])
def test_step_scoring_in_collect_stays_in_step_on_uneven_fsdp_processes(tmp_path, method, port, tokenizer,
                                                                       tiny_teacher_dir):
    """ReNIO/TOPD score the step in `collect` (teacher states, student log-probs, per-token
    divergences) one chunk at a time; with 3 sequences on one process and 1 on the other the
    processes ran 3 and 1 sharded forwards and hung. TOPD's guidance: one process has a branch to
    continue, the other none (it returned early and hung the other). `renio-opd`: a separate OPD
    teacher, sharded by FSDP like the student. Results equal one process's."""
    import json

    script = os.path.join(os.path.dirname(__file__), "step_scores_fsdp.py")
    args = ["renio", f"opd:{tiny_teacher_dir}"] if method == "renio-opd" else [method]
    subprocess.run([sys.executable, script, str(tmp_path / "one"), *args], check=True, env=_env(), timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                    script, str(tmp_path / "two"), *args], check=True, env=_env(), timeout=300)
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    parts = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    # sharded on both processes: the OPSD teacher is the student itself, the OPD teacher its own model
    assert not one["teacher_sharded"] and all(p["teacher_sharded"] for p in parts)
    branches = parts[0]["branches"] + parts[1]["branches"]
    assert len(one["branches"]) == (1 if method == "topd" else 0) and len(branches) == len(one["branches"])
    for (tokens_one, hidden_one), (tokens_two, hidden_two) in zip(one["branches"], branches):
        assert tokens_one == tokens_two  # greedy continuation by the sharded teacher
        assert abs(hidden_one - hidden_two) <= 1e-3 * max(1.0, abs(hidden_one))
    for key in ("logprobs", "divergences", "teacher"):
        two = parts[0][key] + parts[1][key]
        assert len(two) == len(one[key]) == 4
        for a, b in zip(one[key], two):
            torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                       atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method,port", [("renio", 29543), ("topd", 29544)])
def test_a_process_left_without_rollouts_still_scores_with_the_others(tmp_path, method, port):
    """`drop_truncated` and the outcome filter may leave a process with no rollout on any step
    (TOPD), a step may give a process no problem (ReNIO); both returned from `collect` early there
    while the other process ran sharded scoring passes (FSDP hung). Now every process takes part;
    the first process's units equal one process's."""
    import json

    script = os.path.join(os.path.dirname(__file__), "step_scores_fsdp.py")
    subprocess.run([sys.executable, script, str(tmp_path / "one"), method, "filtered"], check=True, env=_env(),
                   timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                    script, str(tmp_path / "two"), method, "filtered"], check=True, env=_env(), timeout=300)
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())["units"]
    first, second = (json.loads((tmp_path / "two" / f"rank{r}.json").read_text())["units"] for r in (0, 1))
    assert len(one) == (6 if method == "topd" else 3)  # TOPD: a guidance branch per rollout too
    assert second == [] and len(first) == len(one)
    for a, b in zip(one, first):
        assert a[0] == b[0]
        assert abs(a[1] - b[1]) <= 1e-4 * max(1.0, abs(a[1]))
        assert a[2] == b[2]  # TOPD's filter weights (None for ReNIO)
        if a[3] is not None:
            assert abs(a[3] - b[3]) <= 1e-4 * max(1.0, abs(a[3]))  # ReNIO's score
