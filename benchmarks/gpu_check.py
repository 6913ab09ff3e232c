"""GPU check: OPSD through trajdistill's own config, build and Trainer, on a Qwen3-1.7B-shaped model.

On a machine with one CUDA GPU, from the repository root (nothing is downloaded: the model is
random-initialised from a `Qwen3Config`, the tokenizer is the embedded SmolLM2 one):

    make setup && .venv/bin/python benchmarks/gpu_check.py

(`make setup` keeps an installed CUDA torch.) It is sized to finish in under 8 minutes on one H100:
four runs of four short steps (the first run's start included).

CPU smoke test of the same code path (a tiny model of the same architecture, float32, seconds):

    .venv/bin/python benchmarks/gpu_check.py --tiny --device cpu

What runs: `configs/opsd-reverse-kl.yaml` (OPSD, full-vocabulary reverse KL, the adapter-off or
frozen-copy teacher shown the reference solution) through `trajdistill.train.run.build` and
`Trainer.train_step`, the native sampling backend (no vLLM), bf16 weights on CUDA (the project's
`model.dtype: auto`), in four runs: {LoRA, full fine-tuning} x {gradient checkpointing off, on}.
Each run first takes one step with the OPSD teacher given the student's own prompt (teacher =
student before any update, so the teacher KL must be 0; both sides score whole rows in that step,
see `whole_rows`), then 3 steps of OPSD proper (prefix sharing as configured, `auto`), 8 rollouts
per step (2 problems x 4 samples) of exactly `--new-tokens` tokens (EOS does not stop them, so
every step has the same work), at temperature 1 without top-k/top-p.

It checks, per run: every loss finite; the trained weights changed (LoRA: every adapter matrix
that starts at zero; full: the embedding/head, a first-layer and a last-layer weight); the teacher
KL at the student's own prompt < 1e-6. Each failed check prints `FAIL ...` and the script exits 1
after the last run; passing checks print `PASS ...`.

It prints per run: rollout tokens per second over the 3 OPSD steps (sampling, teacher scoring,
loss, backward and AdamW all counted), the seconds of sampling ("collect") and of the update per
step, peak GPU memory (`torch.cuda.max_memory_allocated`, reset before each run), and model FLOP
utilisation

    MFU = 6 N (prompt + response tokens of the step's sequences) / step time / peak bf16 FLOP/s

with N the base model's parameters (tied embedding counted once, LoRA's ignored) and the peak
989 TFLOP/s dense bf16 of an H100 or H200 SXM (756 H100 PCIe, 835 NVL; the GPU's name is printed;
other GPUs: pass `--peak-tflops`). 6N per token is the yardstick of a full fine-tuning step; it ignores the
sampling's and the teacher's forward passes (done here too) and over-counts a LoRA backward, so
the update-phase MFU (same FLOPs over the update's seconds only) is printed beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "opsd-reverse-kl.yaml"
# dense bf16 TFLOP/s by the device name's model, most specific first (SXM when the name says nothing)
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0, "H100": 989.0, "H200": 989.0}

QWEN3_1_7B = dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, intermediate_size=6144)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=128)
# Qwen3's vocabulary. The SmolLM2 tokenizer's ids (< 49152) are a subset; the rest are sampled too
# (a random model samples about uniformly) and decode to "". --tiny keeps a vocabulary larger than
# the tokenizer's, smaller than Qwen3's (the LM head dominates a tiny model's CPU time).
VOCAB, TINY_VOCAB = 151936, 65536
OWN_PROMPT = "{problem}\n\n{instruction}"  # the student's prompt text (`render_prompt`) as the teacher's


def qwen3_model(tokenizer, shape: dict, vocab: int, device: torch.device, dtype: torch.dtype, seed: int):
    """A random-initialised Qwen3 causal LM of `shape` on `device` (initialised there: fast on a GPU)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=vocab, max_position_embeddings=40960, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    return model.to(dtype).eval()


def base_parameters(model) -> int:
    """Parameters of the base model, each shared tensor once, LoRA adapters left out."""
    seen: dict[int, int] = {}
    for name, p in model.named_parameters(remove_duplicate=True):
        if "lora_" not in name:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def watched(model, lora: bool) -> dict[str, torch.Tensor]:
    """Copies of the weights that training must change."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if lora and "lora_B" in name:  # zero at the start: any step with a gradient moves it
            out[name] = p.detach().clone()
        elif not lora and any(k in name for k in ("embed_tokens", "layers.0.self_attn.q_proj",
                                                    "mlp.down_proj")):
            out[name] = p.detach().clone()
    if not lora:  # the last layer's down_proj, not every layer's
        downs = sorted((n for n in out if "mlp.down_proj" in n), key=lambda n: int(n.split("layers.")[1].split(".")[0]))
        for n in downs[:-1]:
            del out[n]
    return out


@contextlib.contextmanager
def whole_rows(method, teacher):
    """Student and teacher both score whole rows (`speed.share_prefix: off`), so that at the same
    prompt and weights they run the very same computation: with prefix sharing each side decides
    for itself (the student's gradient checkpointing turns it off for the student only), and two
    exact but differently summed paths differ by bf16 rounding."""
    saved = method.prefix_sharing.mode, teacher.prefix_sharing.mode
    method.prefix_sharing.mode = teacher.prefix_sharing.mode = "off"
    try:
        yield
    finally:
        method.prefix_sharing.mode, teacher.prefix_sharing.mode = saved


class Checks:
    def __init__(self):
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failed.append(what)


def one_run(args, tokenizer, device, dtype, *, lora: bool, checkpointing: bool, check: Checks, peak_flops):
    from trajdistill.config import load_config
    from trajdistill.rollout import SamplingParams
    from trajdistill.train.loop import Trainer
    from trajdistill.train.run import build, load_run_problems

    label = f"{'LoRA' if lora else 'full'}, gradient checkpointing {'on' if checkpointing else 'off'}"
    n, problems_per_step = 4, args.rollouts // 4
    scratch = tempfile.TemporaryDirectory(prefix="gpu-check-")
    run_dir = Path(scratch.name)
    steps = 1 + args.steps
    cfg = load_config(PRESET, {
        "model.device": str(device), "model.dtype": {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype],
        "model.gradient_checkpointing": checkpointing, "lora.enabled": lora,
        "sampling.backend": "native", "sampling.n": n, "sampling.max_new_tokens": args.new_tokens,
        "sampling.temperature": 1.0, "sampling.top_p": 1.0, "sampling.top_k": 0,
        "sampling.batch_size": args.rollouts,
        "optim.problems_per_step": problems_per_step, "optim.micro_batch_size": args.rollouts,
        "optim.steps": steps, "optim.lr": 1e-4, "optim.warmup_ratio": 0.0, "optim.schedule": "constant",
        "output_dir": str(run_dir), "prompt.privileged": OWN_PROMPT,  # first step: the student's own prompt
    })
    gc.collect()  # the previous run's model and optimizer, before the peak is reset
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = qwen3_model(tokenizer, TINY if args.tiny else QWEN3_1_7B, TINY_VOCAB if args.tiny else VOCAB,
                        device, dtype, seed=0)
    ctx, method, _ = build(cfg, run_dir, model=model, tokenizer=tokenizer)
    # exactly `new_tokens` per rollout: EOS does not end one (a random model rarely says it anyway)
    method.sampling_params = lambda step: SamplingParams(
        n=n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.new_tokens,
        seed=cfg.seed * 100_003 + step * 7919, stop_at_eos=False)
    problems = load_run_problems(cfg).train
    trainer = Trainer(cfg, run_dir, method, ctx, method.train_items(problems), log_console=False)
    n_params = base_parameters(trainer.model)
    before = watched(trainer.model, lora)

    def sequence_tokens(step: int) -> int:
        items = trainer.step_items(step)
        return sum(n * (len(method.student_prompt(p)) + args.new_tokens) for p in items)

    with whole_rows(method, ctx.teacher):
        own_kl = trainer.train_step(0)["loss"]
    check(math.isfinite(own_kl) and abs(own_kl) < 1e-6,
          f"[{label}] teacher KL at the student's own prompt, before any update: {own_kl:.3g} (< 1e-6)")
    cfg.prompt.privileged = type(cfg.prompt)().privileged  # OPSD proper: the reference-solution prompt
    assert method.teacher_prompt(problems[0]) != method.student_prompt(problems[0])

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    records = []
    for step in range(1, steps):
        started = time.perf_counter()
        m = trainer.train_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        records.append({"wall": time.perf_counter() - started, "loss": m["loss"], "tokens": m["tokens"],
                        "collect": m["collect_s"], "update": m["update_s"], "seq_tokens": sequence_tokens(step)})
    losses = [r["loss"] for r in records]
    check(all(math.isfinite(x) for x in [own_kl, *losses]), f"[{label}] finite losses: "
          + ", ".join(f"{x:.4g}" for x in losses))
    after = dict(trainer.model.named_parameters())
    unchanged = [name for name, old in before.items() if torch.equal(after[name].detach(), old)]
    check(bool(before) and not unchanged, f"[{label}] trained weights changed ({len(before) - len(unchanged)}"
          f"/{len(before)} watched tensors{'; unchanged: ' + ', '.join(unchanged[:3]) if unchanged else ''})")

    wall = sum(r["wall"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    flops = sum(6 * n_params * r["seq_tokens"] for r in records)
    update = sum(r["update"] for r in records)
    line = (f"[{label}] N={n_params / 1e9:.3f}B, {len(records)} steps of {args.rollouts} rollouts x {args.new_tokens} "
            f"tokens: {tokens / wall:,.0f} rollout tokens/s; per step {wall / len(records):.2f} s "
            f"(collect {sum(r['collect'] for r in records) / len(records):.2f} s, update {update / len(records):.2f} s)")
    if device.type == "cuda":
        line += f"; peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    if peak_flops:
        line += (f"; MFU {100 * flops / wall / peak_flops:.1f}% of the step, "
                 f"{100 * flops / update / peak_flops:.1f}% of the update")
    print(line, flush=True)
    del trainer, ctx, method, model
    scratch.cleanup()
    return {"label": label, "tokens_per_s": tokens / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny Qwen3 (same architecture), float32: a smoke test")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cpu")
    ap.add_argument("--steps", type=int, default=3, help="OPSD steps per run (after the own-prompt step)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens per rollout (default 128; --tiny 8)")
    ap.add_argument("--rollouts", type=int, default=8, help="rollouts per step (4 per problem)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    ap.add_argument("--only", choices=["lora", "full"], default=None, help="run only LoRA or only full fine-tuning")
    args = ap.parse_args()
    if args.rollouts % 4:
        ap.error("--rollouts must be a multiple of 4")
    args.new_tokens = args.new_tokens or (8 if args.tiny else 128)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type != "cuda" and not args.tiny:
        ap.error("the full-size model needs a CUDA GPU (use --tiny for the CPU smoke test)")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    from trajdistill.models import load_tokenizer

    hf_logging.set_verbosity_error()
    peak_flops = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        peak_flops = tflops * 1e12 if tflops else None
        print(f"GPU: {name}; peak dense bf16 {'%.0f TFLOP/s' % tflops if tflops else 'unknown (no MFU; --peak-tflops)'}; "
              f"torch {torch.__version__}", flush=True)
    else:
        print(f"device: {device} (no MFU off a GPU); torch {torch.__version__}", flush=True)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    check = Checks()
    started = time.perf_counter()
    for lora in ([args.only == "lora"] if args.only else [True, False]):
        for checkpointing in (False, True):
            one_run(args, tokenizer, device, dtype, lora=lora, checkpointing=checkpointing, check=check,
                    peak_flops=peak_flops)
    print(f"total {time.perf_counter() - started:.0f} s; "
          + ("all checks passed" if not check.failed else f"{len(check.failed)} check(s) FAILED"), flush=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
