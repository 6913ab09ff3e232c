"""TRD's refinement table (TRD paper, appendix B.1) on this machine: y_o vs y_r.

Runs TRD stages 1-2 (student rollout, then refinement by the teacher) over the first N training
problems and prints the verifier pass rate and median token length of y_o and y_r, the joint
outcomes (fail->pass, pass->fail, pass->pass, fail->fail) and the refinement statuses.

    nice -n 5 .venv/bin/python experiments/trd_refinement_table.py              # OPSD, 128 problems
    .venv/bin/python experiments/trd_refinement_table.py --from runs/X/rollouts/trd.parquet
    .venv/bin/python experiments/trd_refinement_table.py --set sampling.max_new_tokens=192

Writes OUT/rollouts/trd.parquet (the dataset; `trd.dataset: OUT/rollouts/trd.parquet` trains on
it without resampling), OUT/rollouts/trd-table.{md,json}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trajdistill.config import load_config
from trajdistill.files import atomic_write_json, atomic_write_text
from trajdistill.methods.trd import load_rows, refinement_table, refinement_table_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/trd-opsd.yaml")
    parser.add_argument("--problems", type=int, default=128, help="training problems to refine")
    parser.add_argument("--out", default="runs/trd-refinement-table")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override key=value")
    parser.add_argument("--from", dest="source", default=None, help="only tabulate a saved TRD parquet")
    args = parser.parse_args()

    if args.source:
        table = refinement_table(load_rows(args.source))
        print(refinement_table_markdown(table))
        return
    from trajdistill.cli_support import quiet_libraries
    from trajdistill.train.run import build, load_run_problems

    quiet_libraries()
    out = Path(args.out)
    cfg = load_config(args.config, [f"data.max_train={args.problems}", f"output_dir={out}", *args.sets])
    started = time.perf_counter()
    _, method, _ = build(cfg, out)
    problems = load_run_problems(cfg).train
    rows = method.offline_rows(problems)  # samples (or reuses) and writes the dataset and the table
    table = refinement_table(rows)
    table["seconds"] = time.perf_counter() - started
    table["config"] = {"config": args.config, "sets": args.sets, "model": cfg.model.name, "setting": cfg.options.setting,
                       "sampling": cfg.sampling.model_dump(), "refine_max_new_tokens": cfg.options.refine_max_new_tokens}
    atomic_write_json(out / "rollouts/trd-table.json", table)
    text = refinement_table_markdown(table, f"TRD-{cfg.options.setting.upper()} refinement on {cfg.data.train} "
                                            f"({cfg.model.name})")
    atomic_write_text(out / "rollouts/trd-table.md", text)
    print(text)
    print(f"{table['seconds'] / 60:.1f} min; dataset: {out / 'rollouts/trd.parquet'}")


if __name__ == "__main__":
    main()
