"""Run a micro-batch's forward in groups of similar length, so padded positions are not computed.

Rows of prompt + response are right-padded to the longest row of the batch; with responses that end
at EOS anywhere in the budget, 30-50 % of a batch's positions can be padding. Here the rows are
split, by length, into groups that each run as one forward padded to their own longest row. The
split minimises `padded positions + cost x forwards` over groups of consecutive rows in length
order (for this cost the best partition is one of those, found by a small dynamic program); `cost`
is what one more forward is worth in positions (its fixed part: reading the weights once more,
launching its kernels).

Grouping changes which positions are computed, never which are attended to: each row keeps its own
mask and positions, so the states equal the one-forward states up to float summation order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from rich.console import Console

from trajdistill.models.backbone import final_hidden

console = Console(stderr=True)


def length_buckets(lengths: list[int], cost: float) -> list[list[int]]:
    """Row indices grouped to minimise `sum_g |g| * max_len(g) + cost * (number of groups)`;
    groups are in length order, rows in a group in length order (ties by index)."""
    return [list(g) for g in _split(tuple(lengths), float(cost))]


@functools.lru_cache(maxsize=16)  # a micro-batch's lengths are split for its forward and its metric
def _split(lengths: tuple[int, ...], cost: float) -> tuple[tuple[int, ...], ...]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    if n == 0:
        return ()
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]  # the longest of rows i .. j-1 in length order
        for i in range(j):
            value = best[i] + (j - i) * longest + cost
            if value < best[j]:
                best[j], cut[j] = value, i
    groups = []
    j = n
    while j > 0:
        groups.append(tuple(order[cut[j] : j]))
        j = cut[j]
    return tuple(groups[::-1])


class Bucketing:
    """Whether and how a model's rows are grouped by length (`speed.bucketing`, `speed.bucket_cost`).

    auto: group when it saves padded positions, in a single process (processes of a DDP/FSDP job
    must run the same number of forwards, which grouping by each one's own lengths would not keep);
    off: one padded forward per micro-batch.
    """

    def __init__(self, mode: str = "auto", cost: float = 64.0, who: str = "model"):
        if mode not in ("auto", "off"):
            raise ValueError(f"bucketing must be auto or off, not {mode!r}")
        self.mode, self.cost, self.who = mode, float(cost), who
        self._told = False

    def groups(self, lengths: list[int]) -> list[list[int]] | None:
        """The row groups for these row lengths, or None for one forward over all rows."""
        if self.mode == "off" or len(lengths) < 2:
            return None
        if several_processes():
            if not self._told:
                console.print(f"length bucketing ({self.who}): off, every process must run the same forwards")
                self._told = True
            return None
        groups = length_buckets(lengths, self.cost)
        return groups if len(groups) > 1 else None


def several_processes() -> bool:
    """Whether this process is one of several of a distributed job."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def bucketed_final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                          cols: torch.Tensor, bucketing: Bucketing, device) -> torch.Tensor:
    """The model's final hidden states at `(rows, cols)` of right-padded rows, the forward run in
    the length groups `bucketing` chooses (one forward when it chooses none)."""
    return bucketed_states(lambda ids, mask: final_hidden(model, ids.to(device), mask.to(device)),
                           input_ids, attention_mask, rows, cols, bucketing.groups(attention_mask.sum(-1).tolist()))


def bucketed_states(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                    groups: list[list[int]] | None) -> torch.Tensor:
    """`run(ids, mask)[rows, cols]` for right-padded rows, computed group by group: each group's
    rows cut to its longest row. `run` maps `[b, T]` ids and mask to `[b, T, H]` states."""
    if groups is None:
        states = run(input_ids, attention_mask)
        return states[rows.to(states.device), cols.to(states.device)]
    lengths = attention_mask.sum(-1)
    parts, where = [], torch.empty(rows.shape[0], dtype=torch.long)
    done = 0
    for group in groups:
        index = torch.tensor(group, dtype=torch.long)
        width = int(lengths[index].max())
        states = run(input_ids[index, :width], attention_mask[index, :width])
        local = torch.full((input_ids.shape[0],), -1, dtype=torch.long)
        local[index] = torch.arange(len(group))
        picked = (local[rows] >= 0).nonzero().squeeze(1)  # this group's entries, in order
        parts.append(states[local[rows[picked]].to(states.device), cols[picked].to(states.device)])
        where[picked] = torch.arange(done, done + picked.shape[0])
        done += picked.shape[0]
    return torch.cat(parts)[where.to(parts[0].device)]
