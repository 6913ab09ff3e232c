"""What every method gets from the trainer, and what it gives back.

A method answers three questions for the generic loop in `trajdistill.train.loop`:
- `collect(items, step)`: turn this process's share of the step's data into training units
  (sampling, verification, teacher contexts; no gradient).
- `counts(units)`: how many tokens / sequences they hold (summed over processes and micro-batches,
  these normalise the loss, so accumulation and several processes give the full batch's gradient).
- `loss(units, totals)`: the loss of one micro-batch, already divided by the global totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from trajdistill.config import RunConfig
from trajdistill.records import Problem, Verdict


@dataclass
class MethodContext:
    cfg: RunConfig
    model: Any  # the student (peft or plain; possibly wrapped by accelerate)
    tokenizer: Any
    device: torch.device
    sampler: Any = None
    teacher: Any = None
    verify: Callable[[Problem, str], Verdict] | None = None
    run_dir: Path | None = None
    rank: int = 0
    world: int = 1

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


@dataclass
class StepResult:
    units: list  # training units for this process (TrainSequence, pairs, ...)
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sum, count)
    rollouts: list = field(default_factory=list)  # kept for logging / datasets


class Method(Protocol):
    def collect(self, items: list, step: int) -> StepResult: ...

    def counts(self, units: list) -> dict[str, float]: ...

    def loss(self, units: list, totals: dict[str, float]) -> tuple[torch.Tensor, dict]: ...
