"""Sampling throughput of the HF backend on the embedded SmolLM2-135M-Instruct.

Prints a Markdown table: generated tokens per second at batch 1 and 8 (and 32), with the ratio to
batch 1 measured in the same run. Usage: python benchmarks/sampling.py [--threads 2] [--tokens 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from trajdistill.models import load_model, load_tokenizer
from trajdistill.records import Problem
from trajdistill.rollout import SamplingParams, make_sampler, render_prompt


def measure(sampler, prompts, batch: int, tokens: int) -> tuple[float, int]:
    sampler.batch_size = batch
    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_new_tokens=tokens, seed=0, stop_at_eos=False)
    started = time.perf_counter()
    out = sampler.sample(prompts[:batch], params)
    elapsed = time.perf_counter() - started
    generated = sum(len(r.response_ids) for r in out)
    return generated / elapsed, generated


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    started = time.perf_counter()
    model = load_model(args.model, device="cpu")
    load_s = time.perf_counter() - started
    problems = [Problem(id=str(i), prompt=f"What is {10 + i} + {37 + 2 * i}?") for i in range(max(args.batches))]
    prompts = [render_prompt(tok, p, "Put the final answer in \\boxed{}.") for p in problems]
    sampler = make_sampler("hf", model, tok, progress=False)
    measure(sampler, prompts, 1, 8)  # warm-up
    rows = [(b, *measure(sampler, prompts, b, args.tokens)) for b in args.batches]
    base = rows[0][1]
    print(f"model {args.model}, {args.threads} threads, {args.tokens} new tokens per sequence, load {load_s:.2f}s\n")
    print("| batch | tokens | tokens/s | vs batch 1 |\n|---|---|---|---|")
    for batch, tps, generated in rows:
        print(f"| {batch} | {generated} | {tps:.1f} | {tps / base:.2f}x |")


if __name__ == "__main__":
    main()
