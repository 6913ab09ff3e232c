"""Teachers score the student's tokens under their own context (no gradient).

- `SeparateTeacher`: OPD, a different frozen model with the same vocabulary.
- `AdapterOffTeacher`: OPSD / TRD-OPSD, the student's own base weights with the LoRA adapter
  disabled, so no second copy of the weights is held.
- `FrozenCopyTeacher`: OPSD with full fine-tuning, where no adapter can be switched off: a frozen
  copy of the initial weights (twice the memory; documented in the README).

Each returns final hidden states at the requested positions plus the LM head weight, so the loss
computes teacher log-probs chunk by chunk instead of holding [N, V] teacher logits.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from trajdistill.models.backbone import lm_head_weight
from trajdistill.models.buckets import Bucketing, bucketed_final_hidden
from trajdistill.models.packed import packed_linears
from trajdistill.models.precision import autocast_context
from trajdistill.models.shared_prefix import PrefixSharing, shared_prefix_hidden


class Teacher:
    def __init__(self, model, *, autocast: str = "none", share_prefix: str = "auto",
                 bucketing: Bucketing | None = None, packed: str = "off"):
        """`autocast`: the run's `model.autocast`, the student's compute precision, so that a
        teacher with the student's weights and context gives the student's distribution."""
        self.model = model
        self.autocast = autocast
        self.prefix_sharing = PrefixSharing(share_prefix, "teacher")
        self.bucketing = bucketing or Bucketing("off")
        self.packed = packed  # `speed.packed_linear`: scoring needs no gradient

    def as_teacher(self):
        """Context in which `self.model` computes as the teacher (scoring or sampling)."""
        return contextlib.nullcontext()

    @torch.no_grad()
    def hidden(self, input_ids, attention_mask, rows, cols) -> torch.Tensor:
        """Final hidden states [N, H] at (rows, cols) of the teacher sequences."""
        device = next(self.model.parameters()).device
        with self.as_teacher(), packed_linears(self.model, self.packed), autocast_context(self.autocast, device):
            states = bucketed_final_hidden(self.model, input_ids, attention_mask, rows, cols, self.bucketing, device)
        return states.float()

    @torch.no_grad()
    def response_hidden(self, prompts: list[list[int]], responses: list[list[int]], view) -> torch.Tensor:
        """Final hidden states [N, H] at the positions predicting each response token after its
        teacher prompt. Each distinct prompt is encoded once when `prefix_sharing` allows; else the
        padded rows of `view` (a `train.batch.View` of the same sequences) run whole."""
        device = next(self.model.parameters()).device
        with self.as_teacher(), packed_linears(self.model, self.packed):
            if self.prefix_sharing.use(self.model, prompts):
                with autocast_context(self.autocast, device):
                    return shared_prefix_hidden(self.model, prompts, responses, device,
                                                bucketing=self.bucketing).float()
        return self.hidden(view.input_ids, view.attention_mask, view.rows, view.cols)

    def head_weight(self) -> torch.Tensor:
        return lm_head_weight(self.model).detach()


class SeparateTeacher(Teacher):
    def __init__(self, model, **kwargs):
        for p in model.parameters():
            p.requires_grad_(False)
        super().__init__(model.eval(), **kwargs)


class AdapterOffTeacher(Teacher):
    """The peft student with its adapter disabled: exactly the frozen base model."""

    def as_teacher(self):
        return self.model.disable_adapter()


class FrozenCopyTeacher(SeparateTeacher):
    def __init__(self, student, **kwargs):
        super().__init__(copy.deepcopy(student), **kwargs)
