"""The scale recipe run whole: 2 processes under torchrun, through the CLI, as a user runs it.

{DDP, FSDP2} x {LoRA, full fine-tuning} with the vLLM backend, and FSDP2 with the native backend;
OPSD, OPD with a separate teacher directory, TRD, ReNIO and TOPD, the last two with
`drop_truncated` and an outcome filter. Each runs 2 steps and the evaluation after. The embedded
SmolLM2 (tied embedding and head) runs the combination that crashed (FSDP2 + vLLM + LoRA); tiny
random Llama (tied) and Qwen3 (untied, built from a config here) models run the rest, on the
embedded tokenizer.

After training, the vLLM engine's greedy answers in the run's own final evaluation equal a
native evaluation of the exported `final/` on the same problems: the engine was synced with the
trained weights, whole, through the sharded path.

The vLLM cases run in the vLLM env (`make test` runs `-k vllm` there); the native ones here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
HAS_VLLM = importlib.util.find_spec("vllm") is not None

# (case id, preset, model, strategy, LoRA, extra --set values). The id says the backend first.
CASES = [
    ("vllm-fsdp-lora-opsd-smollm2", "configs/opsd-reverse-kl.yaml", "smollm2", "fsdp", True, []),
    ("vllm-fsdp-full-opd-qwen3", "configs/opd-reverse-kl.yaml", "qwen3", "fsdp", False, ["teacher.name={teacher}"]),
    ("vllm-ddp-lora-topd", "configs/topd-opsd.yaml", "qwen3", "ddp", True,
     ["topd.drop_truncated=true", "topd.outcome_filter=incorrect", "topd.horizon=4"]),
    ("vllm-ddp-full-renio", "configs/renio-opsd.yaml", "llama", "ddp", False,
     ["renio.drop_truncated=true", "renio.outcome_filter=correct"]),
    ("vllm-fsdp-lora-trd", "configs/trd-opsd.yaml", "qwen3", "fsdp", True, ["data.max_train=4", "optim.epochs=null"]),
    # one engine over both processes (vLLM tensor parallelism), each with its own problems (2 and 1)
    ("vllm-fsdp-lora-opsd-tp2-qwen3", "configs/opsd-reverse-kl.yaml", "qwen3", "fsdp", True,
     ["sampling.vllm.tensor_parallel_size=2", "optim.problems_per_step=3", "data.max_eval=3"]),
    ("native-fsdp-lora-opsd-smollm2", "configs/opsd-reverse-kl.yaml", "smollm2", "fsdp", True, []),
    ("native-fsdp-full-topd-qwen3", "configs/topd.yaml", "qwen3", "fsdp", False,
     ["teacher.name={teacher}", "topd.drop_truncated=true", "topd.outcome_filter=incorrect", "topd.horizon=4"]),
]
PORTS = {case[0]: 29610 + i for i, case in enumerate(CASES)}


def tiny_qwen3(tokenizer, seed: int):
    """A small Qwen3 (q/k norms, untied head) on the embedded tokenizer; head_dim 64 for vLLM's CPU kernels."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         initializer_range=0.2)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    """name -> model directory: the tiny students and a tiny Qwen3 teacher (another seed). Their
    EOS row of the head is scaled up so that about half of the positions end the response: a
    random model otherwise never stops within the budget, and `drop_truncated` would drop all."""
    from trajdistill.models import tiny_model

    dirs = {"smollm2": "smollm2-135m-instruct"}
    for name, model in (("llama", tiny_model(tokenizer, seed=0, heads=1)), ("qwen3", tiny_qwen3(tokenizer, 0)),
                        ("teacher", tiny_qwen3(tokenizer, 1))):
        with torch.no_grad():
            model.get_output_embeddings().weight[tokenizer.eos_token_id] *= 30.0
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = str(path)
    return dirs


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _run_case(case, dirs: dict, out: Path) -> subprocess.CompletedProcess:
    name, preset, model, strategy, lora, extra = case
    backend = name.split("-")[0]
    sets = [f"model.name={dirs[model]}", f"distributed.strategy={strategy}", f"lora.enabled={str(lora).lower()}",
            f"sampling.backend={backend}", "sampling.n=2", "sampling.max_new_tokens=8", "optim.steps=2",
            "optim.problems_per_step=4", "optim.micro_batch_size=2", "data.max_eval=4", "eval.k=[1]",
            "eval.max_new_tokens=8", f"output_dir={out}", *[s.format(teacher=dirs["teacher"]) for s in extra]]
    if backend == "vllm":
        sets += ["sampling.vllm.kv_cache_gb=0.25", "sampling.vllm.max_model_len=512"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(PORTS[name]), "-m", "trajdistill.cli", "train", preset]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900, cwd=ROOT)


def _greedy(path: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["problem_id"]: r["response"] for r in rows if r["mode"] == "greedy"}


def _check_run(case, dirs: dict, out: Path, proc: subprocess.CompletedProcess) -> None:
    name, preset, model, strategy, lora, extra = case
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(s["loss"] == s["loss"] for s in steps)  # finite (not NaN)
    final = out / "final"
    assert (final / "model.safetensors").is_file() or any(final.glob("*.safetensors"))
    if "outcome_filter=correct" in " ".join(extra):
        # a random model answers nothing right: every rollout filtered out, no optimizer step,
        # so the exported weights are the initial ones exactly
        assert all(s["skipped"] == 1.0 for s in steps)
        start = load_file(str(Path(dirs[model]) / "model.safetensors"))
        trained = load_file(str(final / "model.safetensors"))
        assert all(torch.equal(start[k], trained[k]) for k in start)
    else:
        assert all(s["skipped"] == 0.0 and s["tokens"] > 0 for s in steps)
    after = _greedy(out / "eval" / "after.samples.jsonl")
    assert len(after) == (3 if "data.max_eval=3" in extra else 4)
    # the final evaluation's greedy answers (this run's backend) equal a native evaluation of final/
    from trajdistill.api import evaluate

    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    config["sampling"].pop("vllm", None)
    config["sampling"]["backend"] = "native"
    native = evaluate(str(final), config=config, k=[1], out_dir=out / "native-eval", label="native")
    assert _greedy(out / "native-eval" / "native.samples.jsonl") == after, native


def _remove_cpu_tp_segments() -> None:
    """vLLM's CPU build leaves its tensor-parallel shared-memory segments behind, under names that
    depend on the ranks only (external_launcher's `env://`), so the next such run could not create
    them. Only the CPU build makes these; a GPU run communicates through NCCL."""
    for path in Path("/dev/shm").glob("*-tp:*-cpushm_*"):
        path.unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c[0].startswith("vllm")], ids=lambda c: c[0])
def test_scale_matrix_vllm(case, model_dirs, tmp_path):
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed (make vllm-env builds an env that has it)")
    out = tmp_path / "run"
    _remove_cpu_tp_segments()
    try:
        proc = _run_case(case, model_dirs, out)
    finally:
        _remove_cpu_tp_segments()
    _check_run(case, model_dirs, out, proc)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c[0].startswith("native")], ids=lambda c: c[0])
def test_scale_matrix_native(case, model_dirs, tmp_path):
    out = tmp_path / "run"
    _check_run(case, model_dirs, out, _run_case(case, model_dirs, out))
