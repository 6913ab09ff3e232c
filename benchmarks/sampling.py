"""Rollout throughput on the embedded SmolLM2-135M-Instruct: HF `generate` vs the native decoding loop,
in the same run, on the workloads the trainer and the evaluation run.

Prints a Markdown table: for each workload, seconds of HF generate, of the native loop and of the
native loop with oneDNN-packed linears (the default, `speed.packed_linear: auto`), their ratios to
HF, and how many answers equal HF's (all draw with the same per-row seeds: the native loop should
give HF's tokens; packed linears round differently in float32, so near-ties can flip). Answers end at EOS, as in training: what finishes early leaves the native
batch. Usage: python benchmarks/sampling.py [--threads 2] [--tokens 64] [--problems 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from trajdistill.data import load_problems
from trajdistill.models import load_model, load_tokenizer
from trajdistill.rollout import SamplingParams, make_sampler, render_prompt

from machine import cpu_description  # benchmarks/machine.py (the script's own directory is on sys.path)


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
    # HF generate with F.linear (the baseline), the native loop with F.linear, and the native loop as
    # configured by default (oneDNN-packed linears, `speed.packed_linear: auto`)
    setups = {"hf": ("hf", args.batch[0], "off"), "native": ("native", args.batch[1], "off"),
              "native+packed": ("native", args.batch[1], "auto")}
    samplers = {name: make_sampler(backend, model, tok, batch_size=size, progress=False, packed=packed)
                for name, (backend, size, packed) in setups.items()}
    for sampler in samplers.values():  # warm-up (and the packed weights' one-time reorder)
        sampler.sample(prompts[:2], SamplingParams(n=1, temperature=0.0, max_new_tokens=4))
    print(f"CPU: {cpu_description()}")
    print(f"model {args.model}, float32, {args.threads} threads, at most {args.tokens} new tokens (EOS ends an answer), "
          f"sequences per call: HF {args.batch[0]}, native {args.batch[1]}\n")
    print("| workload | tokens | HF s | native s | native + packed s | native vs HF | native + packed vs HF "
          "| same tokens as HF: native, native + packed |")
    print("|---|---|---|---|---|---|---|---|")
    for label, ps, params in workloads:
        runs = {name: measure(sampler, ps, params) for name, sampler in samplers.items()}
        hf_s, tokens, hf_out = runs["hf"]
        same = [sum(a == b for a, b in zip(hf_out, runs[name][2])) for name in ("native", "native+packed")]
        print(f"| {label} | {tokens} | {hf_s:.1f} | {runs['native'][0]:.1f} | {runs['native+packed'][0]:.1f} "
              f"| {hf_s / runs['native'][0]:.2f}x | {hf_s / runs['native+packed'][0]:.2f}x "
              f"| {same[0]}/{len(hf_out)}, {same[1]}/{len(hf_out)} |", flush=True)

if __name__ == "__main__":
    main()
