"""A whole OPSD run with `sampling.backend: vllm` through the CLI (run in the vLLM env: make test)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trajdistill.models import tiny_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (make vllm-env builds an env that has it)")


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-vllm")
    tiny_model(tokenizer, seed=0, heads=1).save_pretrained(path)  # head_dim 64: vLLM's CPU kernels
    tokenizer.save_pretrained(path)
    return str(path)


def test_vllm_opsd_run_end_to_end_evaluates_the_trained_weights(vllm_model_dir, tmp_path):
    out = tmp_path / "run"
    sets = ["method=opsd", f"model.name={vllm_model_dir}", "sampling.backend=vllm", "sampling.vllm.kv_cache_gb=1",
            "sampling.vllm.max_model_len=512", "sampling.n=2", "sampling.max_new_tokens=8", "data.max_train=8",
            "data.max_eval=6", "eval.k=[1]", "eval.max_new_tokens=8", "lora.r=4", "lora.alpha=8", "optim.steps=2",
            "optim.problems_per_step=2", "optim.lr=0.05", "optim.warmup_ratio=0", "opsd.diagnostics=false",
            "loss.chunk_size=7", f"output_dir={out}"]
    cmd = [sys.executable, "-m", "trajdistill.cli", "train", "configs/opsd-forward-kl.yaml"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]  # the engine shut down before the process ended
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(s["tokens"] > 0 for s in steps)
    before = [json.loads(r) for r in (out / "eval" / "before.samples.jsonl").read_text().splitlines()]
    after = [json.loads(r) for r in (out / "eval" / "after.samples.jsonl").read_text().splitlines()]
    greedy = lambda rows: [r["response"] for r in rows if r["mode"] == "greedy"]  # noqa: E731
    # the engine was synced: the trained model's greedy answers are not the base model's
    assert greedy(before) != greedy(after)


def test_renio_weights_from_a_vllm_rollout_equal_those_from_hf(tokenizer):
    from trajdistill.config import LoraSpec
    from trajdistill.models.lora import apply_lora
    from trajdistill.rollout.sampler import SamplingParams
    from trajdistill.rollout.vllm import VLLMSampler
    from trajdistill.weighting import renio_sample_weights

    student = apply_lora(tiny_model(tokenizer, seed=0, heads=1), LoraSpec(r=4, alpha=8))
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # a trained adapter: student and teacher (adapter off) differ
    prompts = [tokenizer(t)["input_ids"] for t in ("What is 2 + 3?", "Count to five:", "Name a colour.")]
    engine = VLLMSampler(student, tokenizer, dtype="float32", max_model_len=512, kv_cache_gb=1)
    try:
        engine.sync(student)
        params = SamplingParams(n=2, temperature=1.1, top_k=0, top_p=1.0, max_new_tokens=8, seed=3)
        rollouts = [r for r in engine.sample(prompts, params) if r.response_ids]
    finally:
        engine.close()

    def scored(model_logprobs):
        rows = [torch.as_tensor(x, dtype=torch.float64) for x in model_logprobs]
        width = max(len(r) for r in rows)
        out = torch.zeros(len(rows), width, dtype=torch.float64)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            out[i, : len(r)], mask[i, : len(r)] = r, True
        return out, mask

    def forward(model, r, adapter):
        ids = torch.tensor([r.prompt_ids + r.response_ids])
        ctx = model.disable_adapter() if not adapter else torch.no_grad()
        with torch.no_grad(), ctx:
            logits = model(input_ids=ids).logits[0].double() / 1.1
        start = len(r.prompt_ids)
        return torch.log_softmax(logits[start - 1 : -1], -1).gather(1, torch.tensor(r.response_ids)[:, None])[:, 0]

    teacher, mask = scored([forward(student, r, adapter=False) for r in rollouts])
    from_vllm, _ = scored([r.logprobs for r in rollouts])
    from_hf, _ = scored([forward(student, r, adapter=True) for r in rollouts])  # HF's = the forward pass
    kw = dict(ratio_cap=2.5, threshold=0.8, tau=1.0, weight_cap=10.0, normalize="micro")
    w_vllm = renio_sample_weights(from_vllm, teacher, mask, **kw)
    w_hf = renio_sample_weights(from_hf, teacher, mask, **kw)
    assert torch.allclose(w_vllm, w_hf, atol=1e-4), (w_vllm, w_hf)
    assert not torch.allclose(w_hf, torch.ones_like(w_hf))  # the weights are not trivially equal
