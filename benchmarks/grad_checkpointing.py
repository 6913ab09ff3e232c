"""Peak memory and step time of one LoRA forward + backward, with and without gradient checkpointing.

    PYTHONPATH=src python benchmarks/grad_checkpointing.py [--tokens 2048] [--model smollm2-135m-instruct]

Each configuration runs in a fresh process, so its peak resident memory (`ru_maxrss`, which also
sees torch's CPU allocations) is its own. The step is the training path: `final_hidden`, then the
chunked token log-probs from the LM head weight, mean, backward. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from machine import cpu_description  # benchmarks/machine.py (the script's own directory is on sys.path)


def one_step(model_name: str, tokens: int, checkpointing: bool, threads: int) -> dict:
    import torch

    from trajdistill.config import LoraSpec
    from trajdistill.losses.logprobs import token_logprobs
    from trajdistill.models import load_model
    from trajdistill.models.backbone import final_hidden, lm_head_weight
    from trajdistill.models.lora import apply_lora

    torch.set_num_threads(threads)
    model = load_model(model_name, dtype="float32", device="cpu")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(model, LoraSpec(r=16, alpha=32)).train()
    ids = torch.randint(100, 40_000, (1, tokens), generator=torch.Generator().manual_seed(0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    hidden = final_hidden(model, ids, torch.ones_like(ids))[0, :-1]
    loss = -token_logprobs(hidden, lm_head_weight(model), ids[0, 1:], chunk_size=512).mean()
    loss.backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"loaded_mib": before / 1024, "peak_mib": peak / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.model, args.tokens, args.child == "on", args.threads)))
        return
    rows = []
    for setting in ("off", "on"):
        out = subprocess.run([sys.executable, __file__, "--child", setting, "--model", args.model,
                              "--tokens", str(args.tokens), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        rows.append((setting, json.loads(out.strip().splitlines()[-1])))
    print(f"CPU: {cpu_description()}")
    print(f"{args.model}, LoRA r=16, 1 x {args.tokens} tokens, fp32, CPU ({args.threads} threads), "
          "one forward + backward\n")
    print("| gradient checkpointing | peak RSS (MiB) | after loading (MiB) | step peak - loaded (MiB) | step time (s) |")
    print("|---|---:|---:|---:|---:|")
    for setting, r in rows:
        print(f"| {setting} | {r['peak_mib']:.0f} | {r['loaded_mib']:.0f} | {r['peak_mib'] - r['loaded_mib']:.0f} "
              f"| {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
