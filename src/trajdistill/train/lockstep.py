"""What keeps a training step the same however the run is split into processes or resumed.

The items a step sees and its random seeds are functions of the step alone; counts and metrics
are summed over every process; a process with nothing to train still runs the forward pass, so
DDP's collectives stay matched across processes.
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


def zero_loss(model) -> torch.Tensor:
    """A loss of exactly zero that still runs the model's forward, so DDP ranks stay in step."""
    dummy = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
    return model(input_ids=dummy, attention_mask=torch.ones_like(dummy), logits_to_keep=1).logits.sum() * 0.0
