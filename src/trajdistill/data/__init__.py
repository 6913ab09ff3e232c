"""Problems: built-in sets, problem files, the generated arithmetic family, the held-out split.

`load_problems(source, **opts)` is the one entry point:

    load_problems("builtin:gsm8k?split=test")
    load_problems("builtin:arith?ops=add,sub&digits=2&wrapper=bare,story&count=200")
    load_problems("data/train.jsonl", fields={"prompt": "question", "answer": "final"})
    load_problems("data/saved_dataset", split="train")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from trajdistill import UserError
from trajdistill.data.arithmetic import (
    ARITH_MIX,
    ARITH_MIX_COUNT,
    ArithSpec,
    arith_mix_problems,
    arith_problems,
    generate_component,
    generate_mix,
)
from trajdistill.data.problems import (
    FieldMap,
    load_dataset_dir_problems,
    load_file_problems,
    load_jsonl_problems,
    load_parquet_problems,
    split_problems,
    stable_unit_hash,
)
from trajdistill.data.builtin import PREFIX, BUILTINS, load_builtin, parse_builtin_name  # after arithmetic
from trajdistill.records import Problem


def load_problems(source: str | Path, *, fields: FieldMap | Mapping[str, str | None] | None = None,
                  kind: str = "math", split: str | None = None, **opts: Any) -> list[Problem]:
    """Problems from `builtin:NAME[?options]` or a file / saved dataset directory.

    `fields` and `kind` apply to files (builtin sets have fixed mappings, so one config's `fields`
    can serve a file train set and a builtin eval set); `split` picks a split of a saved
    DatasetDict or of a builtin set that has several; other keyword options go to the builtin loader.
    A `kind="code"` JSONL file without a field mapping is read by `trajdistill.data.code`, which
    builds the test objects; with a mapping, `tests` is passed through as stored.
    """
    if isinstance(source, str) and source.startswith(PREFIX):
        if split is not None:
            opts["split"] = split
        return load_builtin(source, **opts)
    if opts:
        raise UserError(f"{source}: options {sorted(opts)} only apply to builtin sets")
    if kind == "code" and fields is None and str(source).endswith(".jsonl"):
        from trajdistill.data.code import load_code_problems  # turns raw tests into test objects

        return load_code_problems(source)
    return load_file_problems(source, fields, kind, split)


__all__ = [
    "ARITH_MIX",
    "ARITH_MIX_COUNT",
    "ArithSpec",
    "BUILTINS",
    "FieldMap",
    "Problem",
    "arith_mix_problems",
    "arith_problems",
    "generate_component",
    "generate_mix",
    "load_builtin",
    "load_dataset_dir_problems",
    "load_file_problems",
    "load_jsonl_problems",
    "load_parquet_problems",
    "load_problems",
    "parse_builtin_name",
    "split_problems",
    "stable_unit_hash",
]
