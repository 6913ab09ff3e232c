"""What keeps a training step the same however the run is split into processes or resumed.

The items a step sees and its random seeds are functions of the step alone; counts and metrics
are summed over every process; every process runs as many micro-batches as the busiest one, each
through the same forward passes, so the collectives of DDP and FSDP (buffer broadcasts, gathers of
sharded weights, gradient reductions) stay matched across processes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trajdistill.train.distributed import is_distributed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class DataOrder:
    """Which items each step sees: epoch-wise permutations seeded by the run seed.

    Step s takes items [s * B, (s + 1) * B) of the concatenated permutations, so the position in
    the data is a pure function of the step and a resumed run sees exactly the same batches.
    """

    size: int
    batch: int
    seed: int

    def indices(self, step: int) -> list[int]:
        out = []
        for flat in range(step * self.batch, (step + 1) * self.batch):
            epoch, offset = divmod(flat, self.size)
            perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 7 + epoch))
            out.append(int(perm[offset]))
        return out


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not is_distributed():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def merge_metric_sums(parts: list[dict[str, tuple[float, float]]]) -> dict[str, float]:
    """Combine (sum, count) pairs from every process and micro-batch into means."""
    if is_distributed():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, parts)
        parts = [p for proc in gathered for p in proc]
    sums: dict[str, list[float]] = {}
    for part in parts:
        for name, (s, c) in part.items():
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += s
            acc[1] += c
    return {name: (s / c if c else float("nan")) for name, (s, c) in sums.items()}


def lockstep_micro_batches(units: list, size: int, device: torch.device) -> list[tuple[list, bool]]:
    """`units` in micro-batches of `size`, each with whether it counts: as many on every process.

    A process with fewer micro-batches than the busiest one runs fillers: copies of its first
    micro-batch (a process with no units borrows one unit from another), whose loss is multiplied by
    zero. A filler goes through the method's loss like a real micro-batch, so it runs the same
    forwards (teacher, student, prefix-shared passes) and takes part in the same collectives; FSDP
    gathers its sharded weights in every forward, and a process that ran fewer forwards would leave
    the others waiting for ever. A single process gets its micro-batches as they are (one empty
    micro-batch when there are no units)."""
    micro = [units[i : i + size] for i in range(0, len(units), size)]
    if not is_distributed():
        return [(mb, True) for mb in micro] or [([], True)]
    spread = torch.tensor([len(micro), -len(micro)], dtype=torch.float64, device=device)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    most, fewest = int(spread[0]), int(-spread[1])
    if most == 0:
        return [([], True)]
    filler = micro[0] if micro else None
    if fewest == 0:  # every process calls the gather; one without units takes another's first unit
        offered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(offered, units[:1])
        filler = filler or next(o for o in offered if o)
    return [(mb, True) for mb in micro] + [(filler, False)] * (most - len(micro))


def zero_loss(model) -> torch.Tensor:
    """A loss of exactly zero that still runs the model's forward, so DDP ranks stay in step."""
    dummy = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
    return model(input_ids=dummy, attention_mask=torch.ones_like(dummy), logits_to_keep=1).logits.sum() * 0.0
