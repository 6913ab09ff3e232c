"""OPD with a separate, stronger teacher built here: teacher, student before and student after.

    .venv/bin/python experiments/opd_from_sft_teacher.py --out runs/opd-sft-teacher [--steps 10] [--eval 256]

No second model ships offline, so the teacher is made: SmolLM2-135M-Instruct writes n traces per
training problem with the reference solution in context, the verified-correct ones are the SFT set
(REDI's stage 1), and SFT on them gives a model that answers better without the reference
(strict grading, 256 held-out problems: 0.0 -> 10.9 % greedy; README). Then OPD (`method: opd`, the SFT model as
`teacher`, the base model as the student, student's own rollouts) with reverse KL and with forward
KL, from the same base, at the same steps. The report has one row per model on the same held-out
problems (teacher = the SFT run's `after`, student before = its `before`) and the paired changes.

Every stage is skipped when its output exists, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

# The demo's prompts (configs/demo.yaml), as YAML values of `--set`-style overrides.
DEMO_PROMPTS = ["prompt.instruction=Put your final answer within \\boxed{}.",
                'prompt.privileged="{problem}\\n\\nReference solution:\\n{reference}\\n\\n{instruction}"']


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/opd-sft-teacher")
    ap.add_argument("--problems", type=int, default=96, help="training problems the teacher's SFT traces come from")
    ap.add_argument("--n", type=int, default=4, help="traces per problem")
    ap.add_argument("--tokens", type=int, default=64, help="sampling and evaluation budget")
    ap.add_argument("--eval", type=int, default=256, help="held-out problems (greedy accuracy needs >= 256)")
    ap.add_argument("--k", default="1", help="sampled evaluation: k values, comma-separated (greedy always)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--per-step", type=int, default=6, help="problems per OPD step")
    ap.add_argument("--lr", default="1e-3")
    ap.add_argument("--divergences", default="reverse_kl,forward_kl")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TORCH_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from trajdistill.config import load_config
    from trajdistill.report import build_report
    from trajdistill.traces_cli import generate_command, pairs_command
    from trajdistill.train.run import train_command

    out = Path(args.out)
    held_out = [f"data.held_out={args.eval}", f"data.max_eval={args.eval}", f"eval.k=[{args.k}]"]
    common = [*DEMO_PROMPTS, *held_out, f"sampling.max_new_tokens={args.tokens}", f"eval.max_new_tokens={args.tokens}"]
    traces, data = out / "traces", out / "data"
    if not (traces / "traces.jsonl").exists():
        generate_command(load_config("configs/_offline.yaml", common + [f"sampling.n={args.n}", "sampling.batch_size=64"]),
                         traces, max_problems=args.problems, problems_per_chunk=16)
    if not (data / "sft.jsonl").exists():
        opts = load_config("configs/sft.yaml").options
        print(pairs_command(traces, data, max_prompt_tokens=opts.max_prompt_tokens,
                            max_response_tokens=opts.max_response_tokens))
    teacher = out / "teacher-sft"
    if not (teacher / "final" / "config.json").exists():
        train_command(load_config("configs/sft.yaml", common + [f"sft.dataset={data / 'sft.jsonl'}",
                                                                f"output_dir={teacher}"]))
    runs = [teacher]
    for divergence in args.divergences.split(","):
        run = out / f"opd-{divergence.replace('_', '-')}"
        runs.append(run)
        if (run / "eval" / "after.json").exists():
            continue
        train_command(load_config("configs/opd-reverse-kl.yaml", common + [
            f"teacher.name={teacher / 'final'}", f"loss.divergence={divergence}", f"output_dir={run}",
            f"optim.steps={args.steps}", f"optim.problems_per_step={args.per_step}", f"optim.lr={args.lr}",
            "opd.drop_truncated=true", "eval.before=false"]))
    report = build_report(runs, out / "report",
                          "OPD from an SFT-built teacher (SmolLM2-135M, arith-mix): teacher = teacher-sft after, "
                          "student before = teacher-sft before")
    print(report.read_text())


if __name__ == "__main__":
    main()
