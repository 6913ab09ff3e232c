"""Rollout throughput on the embedded SmolLM2-135M-Instruct: HF `generate` vs the native decoding loop,
in the same run, on the workloads the trainer and the evaluation run.

Prints a Markdown table: for each workload, seconds and generated tokens per second of each backend
and the native/HF ratio, and whether both produced the same tokens (they draw with the same per-row
seeds, so they should). Answers end at EOS, as in training: what finishes early leaves the native
batch. Usage: python benchmarks/sampling.py [--threads 2] [--tokens 64] [--problems 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from trajdistill.data import load_problems
from trajdistill.models import load_model, load_tokenizer
from trajdistill.rollout import SamplingParams, make_sampler, render_prompt


def measure(sampler, prompts, params) -> tuple[float, int, list]:
    started = time.perf_counter()
    out = sampler.sample(prompts, params)
    elapsed = time.perf_counter() - started
    return elapsed, sum(len(r.response_ids) for r in out), [r.response_ids for r in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs=2, default=[64, 256], metavar=("HF", "NATIVE"),
                    help="sequences per call: HF's (the demo's setting before the native loop) and native's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, device="cpu")
    problems = load_problems("builtin:arith-mix")[: args.problems]
    prompts = [render_prompt(tok, p, "Put your final answer within \\boxed{}.") for p in problems]
    seeds = tuple(range(len(prompts)))
    workloads = [
        (f"train step: {min(6, len(prompts))} problems x 4 (T=1, top-k 20, top-p 0.95)", prompts[:6],
         SamplingParams(n=4, temperature=1.0, top_k=20, top_p=0.95, max_new_tokens=args.tokens, prompt_seeds=seeds)),
        (f"eval: {len(prompts)} greedy", prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=args.tokens)),
        (f"eval: {len(prompts)} x 4 sampled (T=0.6, top-k 20, top-p 0.95)", prompts,
         SamplingParams(n=4, temperature=0.6, top_k=20, top_p=0.95, max_new_tokens=args.tokens, prompt_seeds=seeds)),
    ]
    samplers = {name: make_sampler(name, model, tok, batch_size=size, progress=False)
                for name, size in zip(("hf", "native"), args.batch)}
    for sampler in samplers.values():  # warm-up
        sampler.sample(prompts[:2], SamplingParams(n=1, temperature=0.0, max_new_tokens=4))
    print(f"model {args.model}, float32, {args.threads} threads, at most {args.tokens} new tokens (EOS ends an answer), "
          f"sequences per call: HF {args.batch[0]}, native {args.batch[1]}\n")
    print("| workload | tokens | HF s | HF tok/s | native s | native tok/s | speed-up | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for label, ps, params in workloads:
        hf_s, tokens, hf_out = measure(samplers["hf"], ps, params)
        nat_s, _, nat_out = measure(samplers["native"], ps, params)
        same = sum(a == b for a, b in zip(hf_out, nat_out))
        print(f"| {label} | {tokens} | {hf_s:.1f} | {tokens / hf_s:.0f} | {nat_s:.1f} | {tokens / nat_s:.0f} "
              f"| {hf_s / nat_s:.2f}x | {same}/{len(hf_out)} |", flush=True)


if __name__ == "__main__":
    main()
