"""Weight sync into the vLLM engine: the streamed, versioned path against the whole-model path it
replaced, measured in one run, LoRA and full fine-tuning, on the embedded SmolLM2-135M-Instruct.

- old: before every sync, a content hash of every trainable parameter (copied to the host) decides
  whether to push; a push builds the whole merged state dict (`list(state.items())`, every
  LoRA-merged weight materialised at once) and hands it to `reload_weights`.
- streamed: the trainer's weights version decides (no pass over the weights); a push streams one
  merged tensor at a time into `reload_weights`.

Rows: a sync after an optimizer step (weights changed) and a sync without a change (skipped), each
the median of `--repeats`; and the extra memory a push holds (the bytes of merged tensors alive at
once, counted from the iterator's tensors). Run it in the vLLM env:
`.venv-vllm/bin/python benchmarks/vllm_sync.py`
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time

import torch

from trajdistill.config import LoraSpec
from trajdistill.models import load_model, load_tokenizer
from trajdistill.models.backbone import base_causal_lm
from trajdistill.models.lora import apply_lora
from trajdistill.rollout.weights import iter_merged_weights

from machine import cpu_description  # benchmarks/machine.py (the script's own directory is on sys.path)


def content_hash(model) -> str:
    """The old skip test: every trainable parameter's bytes, hashed on the host."""
    digest = hashlib.blake2b(digest_size=16)
    for name, param in base_causal_lm(model).named_parameters():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


def old_sync(engine, model, last: list) -> None:
    fingerprint = content_hash(model)
    if last and last[0] == fingerprint:
        return
    state = dict(iter_merged_weights(model))
    engine.engine.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
    engine.engine.reset_prefix_cache()
    last[:] = [fingerprint]


def held_bytes(weights, all_at_once: bool) -> int:
    """Bytes of merged tensors that are new (not the live parameters) held at the peak."""
    live = {p.data_ptr() for p in weights[1].parameters()}
    sizes = [t.numel() * t.element_size() for _, t in iter_merged_weights(weights[0]) if t.data_ptr() not in live]
    return sum(sizes) if all_at_once else max(sizes, default=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the table alone on stdout
    from trajdistill.rollout.vllm import VLLMSampler

    tok = load_tokenizer(args.model)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; {args.model} float32\n")
    print("| weights | sync after a step: old s | streamed s | old / streamed | unchanged: old s | streamed s "
          "| merged tensors held: old MB | streamed MB |\n|---|---|---|---|---|---|---|---|")
    for label in ("LoRA r=16 all-linear", "full fine-tuning"):
        model = load_model(args.model, dtype="float32", device="cpu")
        if label.startswith("LoRA"):
            model = apply_lora(model, LoraSpec(r=16, alpha=32))
        trainable = [p for p in model.parameters() if p.requires_grad]
        engine = VLLMSampler(model, tok, dtype="float32", max_model_len=512, kv_cache_gb=0.5)
        times = {"old": [], "new": [], "old_skip": [], "new_skip": []}
        last: list = []
        for version in range(1, args.repeats + 1):
            for which in ("old", "new"):
                with torch.no_grad():
                    for p in trainable:  # what an optimizer step does: every trainable weight moves
                        p.add_(1e-4)
                began = time.perf_counter()
                if which == "old":
                    old_sync(engine, model, last)
                else:
                    engine.sync(model, version=2 * version)
                times[which].append(time.perf_counter() - began)
                began = time.perf_counter()
                if which == "old":
                    old_sync(engine, model, last)
                else:
                    engine.sync(model, version=2 * version)
                times[which + "_skip"].append(time.perf_counter() - began)
        engine.close()
        base = base_causal_lm(model)
        old_mb = held_bytes((model, base), all_at_once=True) / 2**20
        new_mb = held_bytes((model, base), all_at_once=False) / 2**20
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {label} | {med['old']:.3f} | {med['new']:.3f} | {med['old'] / med['new']:.2f}x | "
              f"{med['old_skip']:.4f} | {med['new_skip']:.6f} | {old_mb:.0f} | {new_mb:.1f} |", flush=True)
    print("\nmedian of", args.repeats, "syncs each; 'held' counts merged LoRA weights (full fine-tuning hands "
          "the live tensors over, nothing new)", file=sys.stderr)


if __name__ == "__main__":
    main()
