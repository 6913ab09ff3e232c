"""The REDI paper's stability finding at small scale: symmetric (alpha = 1) vs asymmetric (0.8).

    .venv/bin/python experiments/redi_stability.py --pairs runs/redi-compare/data/pairs.jsonl \
        --out runs/redi-stability [--lr 1e-3] [--epochs 3] [--model smollm2-135m-instruct]

Trains `redi` and `redi-symmetric` on the same pairs with the same schedule at a deliberately high
learning rate (no evaluation, curves only) and writes `report.md` with PNG plots of every logged
metric: the collapse signature is `logp/chosen` and `logp/rejected` both falling sharply.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", default="runs/redi-stability")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--alphas", default="0.8,1.0")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TORCH_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from trajdistill.config import load_config
    from trajdistill.report import build_report
    from trajdistill.train.run import train_command

    out = Path(args.out)
    runs = []
    for alpha in args.alphas.split(","):
        run = out / f"alpha-{alpha}"
        runs.append(run)
        if (run / "final" / "config.json").exists():
            continue
        train_command(load_config("configs/redi.yaml", [
            f"model.name={args.model}", f"redi.dataset={args.pairs}", f"redi.alpha={alpha}",
            f"optim.lr={args.lr}", f"optim.epochs={args.epochs}", f"optim.problems_per_step={args.batch}",
            f"output_dir={run}", "eval.before=false", "eval.after=false", *args.sets]))
    report = build_report(runs, out / "report", f"REDI stability: alpha {args.alphas} at lr {args.lr}")
    print(report.read_text())


if __name__ == "__main__":
    main()
