"""The validation split the demo's recipe was chosen on: training-side problems only.

    .venv/bin/python experiments/demo_validation_split.py runs/demo-val/trainside.jsonl
    .venv/bin/trajdistill train configs/demo.yaml --set data.train=runs/demo-val/trainside.jsonl \\
        --set data.held_out=64 -o runs/demo-val/C

Writes the problems of `builtin:arith-mix` that `configs/demo.yaml` trains on (its 96 held-out
problems left out) as a JSONL file. `data.held_out: 64` on that file then splits it, by the same id
hash, into 160 problems to train on and 64 validation problems to evaluate on: neither side holds a
problem of the demo's held-out set, so comparing recipes there never looks at the problems the
README's table reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trajdistill.config import load_config
from trajdistill.data import load_problems, split_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the JSONL file to write")
    parser.add_argument("--config", default="configs/demo.yaml")
    args = parser.parse_args()
    d = load_config(args.config).data
    train, held = split_problems(load_problems(d.train), held_out=d.held_out, seed=d.split_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for p in train:
            f.write(json.dumps({"id": p.id, "prompt": p.prompt, "answer": p.answer, "reference": p.reference}) + "\n")
    side, val = split_problems(load_problems(str(args.out), kind="math"), held_out=64, seed=d.split_seed)
    assert not {p.id for p in side + val} & {p.id for p in held}
    print(f"{args.out}: {len(train)} problems ({len(side)} to train on, {len(val)} for validation); "
          f"the {len(held)} held-out problems left out")


if __name__ == "__main__":
    main()
