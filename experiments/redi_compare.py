"""One command, one table: base, SFT, SFT+REDI, SFT+DPO, SFT+SimPO at equal compute (REDI).

    .venv/bin/python experiments/redi_compare.py --out runs/redi-compare [--problems 96] [--eval 32]

1. traces: SmolLM2 samples n traces per training problem of builtin:arith-mix with privileged
   context (the reference solution), each verified (resumable: rerun continues);
2. pairs: first correct + first incorrect trace per problem, length filters; SFT set = positives;
3. stage 1: SFT on the positives from the base model (its `before` evaluation is the base row);
4. stage 2: REDI / DPO / SimPO from the SFT export, same pairs, steps and batch, each objective
   at each rate of a small learning-rate sweep (`--lrs`, three values);
5. report: held-out greedy, Avg@k and Pass@k with standard errors, plus training curves.

Every stage is skipped when its output exists, so an interrupted comparison resumes. Extra
`--set key=value` overrides go to every stage, traces included (e.g. --set optim.lr=5e-5, or the
demo's prompt: --set 'prompt.instruction=Put your final answer within \\boxed{}.').
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/redi-compare")
    ap.add_argument("--problems", type=int, default=96, help="training problems to sample traces for")
    ap.add_argument("--n", type=int, default=4, help="traces per problem")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--eval", type=int, default=32, help="held-out problems evaluated")
    ap.add_argument("--stage2", default="redi,dpo,simpo")
    ap.add_argument("--lrs", default="1e-5,2e-5,5e-5",
                    help="stage-2 learning-rate sweep, run for each objective (the paper tunes each "
                         "objective's rate separately, REDI paper App. C.4)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override for every stage")
    ap.add_argument("--stage2-set", dest="stage2_sets", action="append", default=[],
                    help="override for the REDI / DPO / SimPO runs only (e.g. optim.lr=1e-4)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TORCH_THREADS", "1")),
                    help="torch threads (1 is far faster than 2 on a busy 2-core machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from trajdistill.config import load_config
    from trajdistill.report import build_report
    from trajdistill.traces_cli import generate_command, pairs_command
    from trajdistill.train.run import train_command

    out = Path(args.out)
    common = [f"data.max_eval={args.eval}", f"sampling.max_new_tokens={args.max_new_tokens}",
              f"sampling.n={args.n}", "sampling.batch_size=64", f"eval.max_new_tokens={args.max_new_tokens}",
              *args.sets]
    traces = out / "traces"
    if not (traces / "traces.jsonl").exists():
        generate_command(load_config("configs/_offline.yaml", common), traces, max_problems=args.problems,
                         problems_per_chunk=16)
    data = out / "data"
    if not (data / "pairs.jsonl").exists():
        opts = load_config("configs/redi.yaml").options  # the length limits of the pair presets
        print(pairs_command(traces, data, max_prompt_tokens=opts.max_prompt_tokens,
                            max_response_tokens=opts.max_response_tokens))

    runs = [out / "sft"]
    if not (runs[0] / "final" / "config.json").exists():
        train_command(load_config("configs/sft.yaml", common + [
            f"sft.dataset={data / 'sft.jsonl'}", f"output_dir={runs[0]}"]))
    for method in args.stage2.split(","):
        for lr in args.lrs.split(","):
            run = out / f"sft+{method}-lr{lr}"
            runs.append(run)
            if (run / "eval" / "after.json").exists():
                continue
            train_command(load_config(f"configs/{method}.yaml", common + [
                f"model.name={runs[0] / 'final'}", f"{method}.dataset={data / 'pairs.jsonl'}", f"output_dir={run}",
                "eval.before=false", f"optim.lr={lr}", *args.stage2_sets]))
    report = build_report(runs, out / "report", "REDI vs DPO vs SimPO after SFT (SmolLM2-135M, arith-mix)")
    print(report.read_text())


if __name__ == "__main__":
    main()
