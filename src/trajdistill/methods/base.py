"""The `Method` base class: what a method declares, and what it gives the shared trainer.

A method is one class in one module, registered under a name (`trajdistill.methods.register`).
Its class declares what it needs; the trainer builds that and hands it over in a `MethodContext`:

- `Options`: the pydantic model of its own config section (the YAML section named after the
  method). Options of other methods are errors, not silent no-ops.
- `needs_sampler`: the trainer's long-lived sampler (`ctx.sampler`) is used for rollouts.
- `teacher_kind(options)`: "none", "separate" (the `teacher:` model) or "self" (the student's
  own base weights: adapter off under LoRA, a frozen copy otherwise).
- `uses_loss_section`: whether `loss.*` (divergence, clipping, top-k, ...) applies to it.

The generic loop (`trajdistill.train.loop`) then calls, every step:
- `collect(items, step)`: this process's share of the step's data -> training units (sampling,
  verification, teacher contexts; no gradient).
- `counts(units)`: sums that normalise the loss (summed over processes and micro-batches, so
  accumulation and several processes give the full batch's gradient).
- `loss(units, totals)`: the loss of one micro-batch, already divided by the global totals, and
  its metrics as (sum, count) pairs.

Optional steps, with defaults here: `train_items` (what the data order iterates over),
`checked_prompts` (prompts preflight measures against `sampling.max_prompt_tokens`),
`progress_metrics` (what the progress line shows), `step_verdicts` (the verifier's verdicts of a
step, which the trainer counts for `rollout/verifier_errors`) and `check_config` (cross-field
validation at config load time, before any model is touched).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from trajdistill.config_sections import explicitly_set
from trajdistill.records import Problem, Verdict

if TYPE_CHECKING:  # torch is imported by the methods themselves, so a config loads without it
    import torch

    from trajdistill.config import RunConfig
    from trajdistill.verify import Verifiers


class MethodOptions(BaseModel):
    """Base of every method's config section: unknown keys are errors, and so is an option that
    applies only when a switch is on, given with the switch off (`only_with`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    only_with: ClassVar[dict[str, str]] = {}
    """option -> the bool option it needs on, e.g. {"horizon": "guidance"}: setting the option to a
    value other than its default while the switch is off is an error naming the option."""

    @model_validator(mode="after")
    def _refuse_options_of_a_switch_that_is_off(self):
        for name, switch in type(self).only_with.items():
            if not getattr(self, switch) and explicitly_set(self, name):
                raise ValueError(f"field '{name}': applies only with {switch}: true")
        return self


TeacherKind = Literal["none", "separate", "self"]


@dataclass
class MethodContext:
    cfg: "RunConfig"
    model: Any  # the student (peft or plain; wrapped by accelerate once the trainer prepares it)
    tokenizer: Any
    device: torch.device
    verifier: "Verifiers"
    sampler: Any = None  # the trainer's long-lived sampler (rollouts and evaluation)
    teacher: Any = None  # a `trajdistill.teacher.Teacher`
    teacher_sampler: Any = None  # samples from the teacher (TRD refinements, TOPD guidance, ...)
    run_dir: Path | None = None
    rank: int = 0
    world: int = 1
    weights_version: int = 0
    """How many times the trainer changed the student's weights (optimizer steps, checkpoint
    loads): engines with their own copy (vLLM) push weights only when it moved."""

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


@dataclass
class StepResult:
    units: list  # training units for this process (TrainSequence, pairs, ...)
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sum, count)
    rollouts: list = field(default_factory=list)  # kept for logging / datasets


class Method:
    """Subclass, set the class attributes, implement `collect`, `counts` and `loss`."""

    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_sampler: ClassVar[bool] = False
    uses_loss_section: ClassVar[bool] = True
    progress_metrics: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(label, metric key) pairs shown on the progress line next to the loss."""

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.opts = ctx.cfg.options

    # -- declarations read before any model loads -------------------------------------------
    @classmethod
    def teacher_kind(cls, options: MethodOptions) -> TeacherKind:
        return "none"

    @classmethod
    def check_config(cls, cfg: "RunConfig") -> None:
        """Cross-field checks of the whole config; raise ValueError("field 'x': ...")."""

    # -- optional steps ----------------------------------------------------------------------
    def train_items(self, problems: list[Problem]) -> list:
        """What the trainer's data order walks over (default: the training problems)."""
        return problems

    def checked_prompts(self, problem: Problem) -> Iterable[tuple[str, list[int]]]:
        """(what, token ids) of every prompt this method builds for `problem`, for preflight."""
        return ()

    def step_verdicts(self, result: StepResult) -> list[Verdict]:
        """Every verdict the step's collect produced (default: those of `result.rollouts`)."""
        return [r.verdict for r in result.rollouts if getattr(r, "verdict", None) is not None]

    # -- every step ----------------------------------------------------------------------------
    def collect(self, items: list, step: int) -> StepResult:
        raise NotImplementedError

    def counts(self, units: list) -> dict[str, float]:
        raise NotImplementedError

    def loss(self, units: list, totals: dict[str, float]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError
