"""Preference pairs and the SFT set from labelled traces, as the REDI authors build them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

from trajdistill import UserError
from trajdistill.rollout.prompts import chat_ids


@dataclass(frozen=True)
class PairFilter:
    """Length limits (tokens; None = no limit) and whether traces cut at max_new_tokens count."""

    max_prompt_tokens: int | None = None
    max_response_tokens: int | None = None
    drop_truncated: bool = True


def fill_lengths(rows: list[dict], tokenizer, system: str | None = None) -> None:
    """Set missing `length` / `prompt_length` (imported traces) with the student's tokenizer."""
    for r in rows:
        if r.get("prompt_length") is None:
            r["prompt_length"] = len(chat_ids(tokenizer, r["prompt"], system))
        if r.get("length") is None:
            r["length"] = len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) + 1  # + EOS


def _usable(row: dict, limits: PairFilter) -> bool:
    if limits.drop_truncated and not row.get("finished", True):
        return False
    for key, limit in (("prompt_length", limits.max_prompt_tokens), ("length", limits.max_response_tokens)):
        if limit is not None:
            if row.get(key) is None:
                raise UserError(f"trace of problem {row.get('problem_id')} has no '{key}'; pass a tokenizer "
                                "so lengths can be measured")
            if row[key] > limit:
                return False
    return True


def build_pairs(traces: Iterable[Mapping], limits: PairFilter = PairFilter()
                ) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(pairs, sft, stats) from labelled traces, as the REDI authors build them.

    A trace is usable if it passes the length filters (and finished, unless drop_truncated is off).
    Pairs: per problem, the first usable correct and the first usable incorrect trace (by
    sample_index), so each problem gives at most one pair. SFT set: every usable correct trace.
    """
    groups: dict[str, list[Mapping]] = {}
    for row in traces:
        groups.setdefault(str(row["problem_id"]), []).append(row)
    pairs, sft = [], []
    stats: Counter = Counter()
    for pid, rows in groups.items():
        rows = sorted(rows, key=lambda r: r.get("sample_index", 0))
        usable = [r for r in rows if _usable(r, limits)]
        stats["traces"] += len(rows)
        stats["filtered_out"] += len(rows) - len(usable)
        correct = [r for r in usable if r["correct"]]
        incorrect = [r for r in usable if not r["correct"]]
        sft += [{"prompt": r["prompt"], "completion": r["completion"], "problem_id": pid,
                 "length": r.get("length")} for r in correct]
        if correct and incorrect:
            c, i = correct[0], incorrect[0]
            pairs.append({"prompt": c["prompt"], "chosen": c["completion"], "rejected": i["completion"],
                          "problem_id": pid, "chosen_length": c.get("length"), "rejected_length": i.get("length")})
        else:
            stats["problems_without_pair"] += 1
    stats.update(problems=len(groups), pairs=len(pairs), sft=len(sft))
    return pairs, sft, dict(stats)
