"""One OPSD update with and without prefix sharing (`speed.share_prefix`), in the same run.

The embedded SmolLM2-135M-Instruct with the OPSD preset's LoRA (r 16, alpha 32, all-linear), the
adapter-off teacher, `--problems` problems x `--n` responses of exactly `--tokens` tokens, all in
one micro-batch. No generation: the responses are fixed text (each problem's reference solution,
cycled from a different offset per response). The teacher's privileged prompt (problem + a
reference solution lengthened with further worked solutions to about `--prompt-tokens` tokens)
is the long part; the student's prompt is the plain problem.

One update = teacher scoring (no grad, `Teacher.response_hidden`) + the student's forward and
backward through the loss (`OPSD.loss` on the cached teacher states, then `backward`). Each row of
the table is the median over `--repeats` of that update, shared and unshared alternating so that
load from other processes hits both alike, after `--warmup` untimed ones. Wall time and the process's
CPU time (user + system, steadier on a shared machine) are shown; ratio = unshared / shared.

The last columns: the padded share of each forward's [rows x width] input (unshared: the two
whole-row views; shared: the prompt pass and the response pass), and the largest difference of
the per-token divergence between the two paths (float32).

    .venv/bin/python benchmarks/prefix_sharing.py                      # 6 x 4 x 64, prompts ~250 and ~1000
    .venv/bin/python benchmarks/prefix_sharing.py --prompt-tokens 250 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from machine import cpu_description  # benchmarks/machine.py (the script's own directory is on sys.path)

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "opsd-forward-kl.yaml"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_method(args, run_dir: Path):
    from trajdistill.config import load_config
    from trajdistill.models import load_model, load_tokenizer
    from trajdistill.train.run import build

    cfg = load_config(PRESET, ["model.device=cpu", f"optim.micro_batch_size={args.problems * args.n}",
                               f"sampling.n={args.n}", f"output_dir={run_dir}", "opsd.diagnostics=false"])
    tokenizer = load_tokenizer(cfg.model.name)
    torch.manual_seed(0)
    ctx, method, _ = build(cfg, run_dir, model=load_model(cfg.model.name, device="cpu"), tokenizer=tokenizer)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter, so the student differs from its teacher
        for name, param in ctx.model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen))
    ctx.model.train()
    return cfg, ctx, method


def sequences(method, tokenizer, args, prompt_tokens: int):
    """`problems` x `n` rows: the student's plain prompt, a privileged teacher prompt of about
    `prompt_tokens` tokens, a response of exactly `tokens` tokens."""
    from trajdistill.data import load_problems
    from trajdistill.records import Problem
    from trajdistill.train.batch import TrainSequence

    pool = [p for p in load_problems("builtin:arith-mix") if p.reference]
    seqs = []
    for i in range(args.problems):
        base = pool[i]
        reference, k = base.reference, 1
        while True:  # lengthen the reference with further worked solutions
            problem = Problem(id=base.id, prompt=base.prompt, answer=base.answer, reference=reference)
            if len(method.teacher_prompt(problem)) >= prompt_tokens:
                break
            other = pool[(i * 37 + k) % len(pool)]
            reference += f"\n\nA similar problem: {other.prompt}\n{other.reference}"
            k += 1
        text = tokenizer(base.reference, add_special_tokens=False)["input_ids"]
        for j in range(args.n):
            start = (j * 7) % len(text)
            response = [text[(start + t) % len(text)] for t in range(args.tokens)]
            seqs.append(TrainSequence(student_prompt=method.student_prompt(problem), response=response,
                                      teacher_prompt=method.teacher_prompt(problem), problem_id=problem.id))
    return seqs


def padded_shares(seqs, shared: bool) -> str:
    def share(rows: list[int]) -> float:
        return 1.0 - sum(rows) / (len(rows) * max(rows)) if max(rows) else 0.0

    out = []
    for side, prompt_of in (("S", lambda s: s.student_prompt), ("T", lambda s: s.teacher_prompt)):
        if shared:
            distinct = {tuple(prompt_of(s)) for s in seqs}
            out.append(f"{side} {share([len(p) for p in distinct]):.1%} / {share([len(s.response) - 1 for s in seqs]):.1%}")
        else:
            out.append(f"{side} {share([len(prompt_of(s)) + len(s.response) for s in seqs]):.1%}")
    return ", ".join(out)


def record_per_token(method) -> None:
    """Keep the last call's detached per-token divergence on `method.last_per_token`."""
    divergence = method.divergence

    def keep_per_token(*a, **k):
        loss, per_token = divergence(*a, **k)
        method.last_per_token = per_token.detach().float().cpu()
        return loss, per_token

    method.divergence = keep_per_token


def one_update(method, ctx, seqs, totals, per_token_out: list) -> tuple[float, float, float, float]:
    """(teacher wall, teacher CPU, student wall, student CPU) seconds of one update."""
    from trajdistill.train.batch import collate

    for s in seqs:
        s.teacher_hidden = None
    ctx.model.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), cpu_seconds()
    view = collate(seqs, ctx.pad_id).teacher
    states = ctx.teacher.response_hidden([s.teacher_prompt for s in seqs], [s.response for s in seqs], view).cpu()
    for seq, h in zip(seqs, states.split([len(s.response) for s in seqs])):
        seq.teacher_hidden = h
    teacher_wall, teacher_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    wall, cpu = time.perf_counter(), cpu_seconds()
    loss, _ = method.loss(seqs, totals)
    loss.backward()
    student_wall, student_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    per_token_out.append(method.last_per_token)
    return teacher_wall, teacher_cpu, student_wall, student_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=6)
    ap.add_argument("--n", type=int, default=4, help="responses per problem")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per response")
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[250, 1000],
                    help="approximate privileged (teacher) prompt lengths, one table row each")
    ap.add_argument("--repeats", type=int, default=1, help="timed updates per path and prompt length")
    ap.add_argument("--warmup", type=int, default=1, help="untimed updates per path first (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from trajdistill.models.shared_prefix import PrefixSharing

    with tempfile.TemporaryDirectory() as tmp:
        cfg, ctx, method = build_method(args, Path(tmp))
        record_per_token(method)
        modes = {"unshared": "off", "shared": "on"}
        rows = []
        for prompt_tokens in args.prompt_tokens:
            seqs = sequences(method, ctx.tokenizer, args, prompt_tokens)
            totals = method.counts(seqs)
            times = {name: [] for name in modes}
            per_token = {name: [] for name in modes}
            for rep in range(args.warmup + args.repeats):
                for name, mode in modes.items():
                    method.prefix_sharing = PrefixSharing(mode, "student")
                    ctx.teacher.prefix_sharing = PrefixSharing(mode, "teacher")
                    got = one_update(method, ctx, seqs, totals, per_token[name])
                    if rep >= args.warmup:
                        times[name].append(got)
            kl_diff = float((per_token["shared"][-1] - per_token["unshared"][-1]).abs().max())
            kl_mean = float(per_token["unshared"][-1].mean())
            t_len = statistics.mean(len(s.teacher_prompt) for s in seqs)
            s_len = statistics.mean(len(s.student_prompt) for s in seqs)
            med = {name: [statistics.median(t[k] for t in times[name]) for k in range(4)] for name in modes}
            rows.append((t_len, s_len, med, kl_diff, kl_mean, seqs))
            print(f"prompts ~{prompt_tokens}: done", flush=True)

    print(f"CPU: {cpu_description()}")
    print(f"\n{args.problems} problems x {args.n} responses x {args.tokens} tokens, one micro-batch, "
          f"SmolLM2-135M-Instruct + LoRA r16 fp32, torch.set_num_threads({args.threads}), "
          f"median of {args.repeats} (after {args.warmup} warm-up)\n")
    print("| teacher prompt (tokens) | path | teacher scoring s (CPU s) | student fwd+bwd s (CPU s) "
          "| update s (CPU s) | update speed-up wall (CPU) | padded share | max abs diff per-token KL |")
    print("|---|---|---|---|---|---|---|---|")
    for t_len, s_len, med, kl_diff, kl_mean, seqs in rows:
        base = med["unshared"]
        for name in modes:
            tw, tc, sw, sc = med[name]
            ratio = ((base[0] + base[2]) / (tw + sw), (base[1] + base[3]) / (tc + sc))
            pad = padded_shares(seqs, name == "shared")
            diff = f"{kl_diff:.2e} (mean KL {kl_mean:.3f})" if name == "shared" else "-"
            print(f"| {t_len:.0f} (student {s_len:.0f}) | {name} | {tw:.2f} ({tc:.2f}) | {sw:.2f} ({sc:.2f}) "
                  f"| {tw + sw:.2f} ({tc + sc:.2f}) | {ratio[0]:.2f}x ({ratio[1]:.2f}x) | {pad} | {diff} |")
    print("\npadded share: unshared, of each view's [rows x (prompt + response)]; shared, of the prompt pass "
          "[distinct prompts x longest] / the response pass [rows x longest response - 1]. S student, T teacher.")


if __name__ == "__main__":
    main()
