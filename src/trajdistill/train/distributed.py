"""What the trainer and methods need from torch.distributed when accelerate launched several
processes; each is the identity on one process."""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_lists(items: list) -> list:
    """Every process's `items`, concatenated in rank order, on every process."""
    if not is_distributed():
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]
