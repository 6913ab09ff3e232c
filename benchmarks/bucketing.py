"""One OPSD update with and without length bucketing (`speed.bucketing`), in the same run.

The setting of `benchmarks/prefix_sharing.py` (SmolLM2-135M-Instruct, the preset's LoRA r16, the
adapter-off teacher on the privileged prompt, all rows in one micro-batch, no generation), but the
responses have the lengths of answers that end at EOS: drawn uniformly from `--min-tokens` to
`--tokens` (seeded, the same in every row of the table). Two batch shapes: `--problems` x `--n`
responses (prefix sharing on: the response pass is what bucketing splits) and `--problems * --n`
distinct problems x 1 (whole rows: bucketing splits the rows themselves).

Each cell is the median over `--repeats` updates (teacher scoring + student forward/backward
through the loss, then `backward`), the settings alternating so that load from other processes
hits them alike, after `--warmup` untimed rounds. "computed positions" is what the student's
forward runs (`batch/padding`'s second number) and its padded share; ratio = off / this setting.

    .venv/bin/python benchmarks/bucketing.py                 # 6 x 4, answers of 8-64 tokens
    .venv/bin/python benchmarks/bucketing.py --costs 0 64 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prefix_sharing import build_method, one_update, record_per_token, sequences  # noqa: E402

from machine import cpu_description  # benchmarks/machine.py (the script's own directory is on sys.path)


def with_lengths(seqs, lengths):
    for seq, n in zip(seqs, lengths):
        seq.response = seq.response[:n]
    return seqs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=6)
    ap.add_argument("--n", type=int, default=4, help="responses per problem (the shared shape)")
    ap.add_argument("--tokens", type=int, default=64, help="longest response")
    ap.add_argument("--min-tokens", type=int, default=8, help="shortest response")
    ap.add_argument("--prompt-tokens", type=int, default=250, help="approximate privileged prompt length")
    ap.add_argument("--costs", type=int, nargs="+", default=[16, 64, 256], help="speed.bucket_cost values")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from trajdistill.models.buckets import Bucketing
    from trajdistill.models.shared_prefix import padding

    gen = torch.Generator().manual_seed(7)
    lengths = torch.randint(args.min_tokens, args.tokens + 1, (args.problems * args.n,), generator=gen).tolist()
    settings = [("off", 0)] + [("auto", c) for c in args.costs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg, ctx, method = build_method(args, Path(tmp))
        record_per_token(method)
        shapes = {
            f"{args.problems} x {args.n} (shared prompts)": with_lengths(
                sequences(method, ctx.tokenizer, args, args.prompt_tokens), lengths),
            f"{args.problems * args.n} x 1 (whole rows)": with_lengths(sequences(
                method, ctx.tokenizer, argparse.Namespace(**{**vars(args), "problems": args.problems * args.n, "n": 1}),
                args.prompt_tokens), lengths),
        }
        for shape, seqs in shapes.items():
            totals = method.counts(seqs)
            times = {s: [] for s in settings}
            per_token = {s: [] for s in settings}
            for rep in range(args.warmup + args.repeats):
                for setting in settings:
                    method.bucketing = Bucketing(*setting, who="student")
                    ctx.teacher.bucketing = Bucketing(*setting, who="teacher")
                    got = one_update(method, ctx, seqs, totals, per_token[setting])
                    if rep >= args.warmup:
                        times[setting].append(got)
            prompts = [s.student_prompt for s in seqs]
            shared = method.prefix_sharing.use(ctx.model, prompts)
            for setting in settings:
                med = [statistics.median(t[k] for t in times[setting]) for k in range(4)]
                pad = padding(prompts, [s.response for s in seqs], shared, Bucketing(*setting))
                diff = float((per_token[setting][-1] - per_token[("off", 0)][-1]).abs().max())
                rows.append((shape, setting, med, pad, diff))
            print(f"{shape}: done", flush=True)

    base = {shape: med for shape, setting, med, _, _ in rows if setting == ("off", 0)}
    print(f"CPU: {cpu_description()}")
    print(f"\nSmolLM2-135M-Instruct + LoRA r16 fp32, torch.set_num_threads({args.threads}); responses of "
          f"{args.min_tokens}-{args.tokens} tokens ({sum(lengths)} in all), privileged prompts ~{args.prompt_tokens} "
          f"tokens; median of {args.repeats} after {args.warmup} warm-up\n")
    print("| batch | bucketing | teacher scoring s (CPU s) | student fwd+bwd s (CPU s) | update s (CPU s) "
          "| speed-up wall (CPU) | student positions computed (padded share) | max abs diff per-token KL |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, (mode, cost), (tw, tc, sw, sc), (padded, computed), diff in rows:
        b = base[shape]
        ratio = ((b[0] + b[2]) / (tw + sw), (b[1] + b[3]) / (tc + sc))
        label = "off" if mode == "off" else f"auto, cost {cost}"
        print(f"| {shape} | {label} | {tw:.2f} ({tc:.2f}) | {sw:.2f} ({sc:.2f}) | {tw + sw:.2f} ({tc + sc:.2f}) "
              f"| {ratio[0]:.2f}x ({ratio[1]:.2f}x) | {computed} ({padded / max(computed, 1):.1%}) "
              f"| {diff:.1e} |")


if __name__ == "__main__":
    main()
