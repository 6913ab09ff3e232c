"""HF `generate` vs the native decoding loop vs the vLLM engine at the demo's sizes, on the embedded SmolLM2-135M-Instruct (LoRA).

Workloads (every sequence generates exactly `--tokens` tokens, EOS ignored, so both backends do the
same work, and the native loop's early exit of finished rows does not apply): one training step's rollouts (6 problems x 4 samples, T=1, top-k 20, top-p 0.95; the
forward pass that would re-score them for exact log-probs is timed apart, as only ReNIO needs it) and one evaluation (64 problems
greedy, then 64 x 4 samples at T=0.7). Also the engine's start-up, a weight sync after a change
and a sync with unchanged weights. Prints one Markdown table. Run it in the vLLM env:
`make bench-vllm`, or .venv-vllm/bin/python benchmarks/vllm_sampling.py [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from trajdistill.config import LoraSpec
from trajdistill.models import load_model, load_tokenizer
from trajdistill.models.lora import apply_lora
from trajdistill.records import Problem
from trajdistill.rollout import SamplingParams, render_prompt
from trajdistill.rollout.hf import HFSampler
from trajdistill.rollout.native import NativeSampler
from trajdistill.rollout.rescore import response_logprobs

from machine import cpu_description  # benchmarks/machine.py (the script's own directory is on sys.path)


def note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tok = load_tokenizer(args.model)
    model = apply_lora(load_model(args.model, dtype=args.dtype, device="cpu"), LoraSpec(r=16, alpha=32))
    problems = [Problem(id=str(i), prompt=f"What is {10 + i} + {37 + 2 * i}?") for i in range(64)]
    prompts = [render_prompt(tok, p, "Put your final answer within \\boxed{}.") for p in problems]
    fixed = dict(max_new_tokens=args.tokens, stop_at_eos=False, seed=0)
    workloads = [
        ("train step: 6 x 4 sampled (T=1, top-k 20, top-p 0.95)", prompts[:6],
         SamplingParams(n=4, temperature=1.0, top_k=20, top_p=0.95, **fixed)),
        ("eval: 64 greedy", prompts, SamplingParams(n=1, temperature=0.0, **fixed)),
        ("eval: 64 x 4 sampled (T=0.7)", prompts, SamplingParams(n=4, temperature=0.7, top_k=0, top_p=1.0, **fixed)),
    ]

    from trajdistill.rollout.vllm import VLLMSampler

    (engine, start_s) = timed(lambda: VLLMSampler(model, tok, dtype=args.dtype))
    note(f"vLLM engine start {start_s:.1f}s")
    engine.sample(prompts[:2], SamplingParams(n=1, max_new_tokens=4))  # warm-up
    vllm_times, rescore_s = [], 0.0
    for name, p, params in workloads:
        rollouts, seconds = timed(lambda: engine.sample(p, params))
        vllm_times.append(seconds)
        note(f"vLLM {name}: {seconds:.1f}s")
        if params.top_k:  # the re-scoring share of that time, measured on its own
            rescore_s = timed(lambda: response_logprobs(model, rollouts, params.temperature))[1]

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1e-3)  # what a training step does: every adapter weight moves
    _, sync_s = timed(lambda: engine.sync(model))
    _, skip_s = timed(lambda: engine.sync(model))
    engine.close()
    note(f"sync {sync_s:.2f}s, unchanged {skip_s:.3f}s, re-scoring {rescore_s:.2f}s")

    torch.set_num_threads(args.threads)  # whatever the engine set for itself
    times = {}
    for label, sampler in (("HF", HFSampler(model, tok, batch_size=64, progress=False)),
                           ("native", NativeSampler(model, tok, batch_size=256, progress=False))):
        sampler.sample(prompts[:2], SamplingParams(n=1, max_new_tokens=4))  # warm-up
        times[label] = []
        for name, p, params in workloads:
            times[label].append(timed(lambda: sampler.sample(p, params))[1])
            note(f"{label} {name}: {times[label][-1]:.1f}s")

    load = os.getloadavg()[0]
    print(f"CPU: {cpu_description()}")
    print(f"{args.model} ({args.dtype}, LoRA r=16 all-linear), {args.threads} cores, {args.tokens} new tokens "
          f"per sequence, 1-min load average at the end {load:.1f}\n")
    print("| workload | tokens | HF s | native s | vLLM s | native vs HF | vLLM vs HF |\n|---|---|---|---|---|---|---|")
    for (name, p, params), h, n, v in zip(workloads, times["HF"], times["native"], vllm_times):
        tokens = len(p) * params.n * args.tokens
        print(f"| {name} | {tokens} | {h:.1f} | {n:.1f} | {v:.1f} | {h / n:.2f}x | {h / v:.2f}x |")
    print(f"| vLLM engine start (in-process, eager; incl. writing the model to /dev/shm) | | | | {start_s:.1f} | | |")
    print(f"| re-scoring forward pass for exact log-probs under top-k/top-p (not in the step above; only "
          f"`rescore_logprobs: true`, or ReNIO) | | | | {rescore_s:.2f} | | |")
    print(f"| weight sync after a change (LoRA merge + reload_weights) | | | | {sync_s:.2f} | | |")
    print(f"| sync with unchanged weights (fingerprint only) | | | | {skip_s:.3f} | | |")


if __name__ == "__main__":
    main()
