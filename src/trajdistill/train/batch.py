"""From rollouts to the padded tensors a loss sees.

A `TrainSequence` is one response with its student context and (for distillation) its teacher
context. `collate` right-pads both views and records, for every response token, where the
position that predicts it sits in each view, so student and teacher rows line up token by token:
the prediction of response token j lives at position len(context) - 1 + j.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch


@dataclass
class TrainSequence:
    """One response to train along, with everything a loss may weigh it by (all typed)."""

    student_prompt: list[int]
    response: list[int]
    teacher_prompt: list[int] | None = None
    teacher_response: list[int] | None = None
    """Teacher-side tokens when they differ from `response` (never, except in tests)."""
    passed: bool | None = None
    problem_id: str = ""
    finished: bool = True
    sample_weight: float = 1.0
    """Per-sample weight w_i (TOPD's guidance branches carry lambda_g here)."""
    token_weights: torch.Tensor | None = None
    """Per-token weights u_t, `[len(response)]` (TOPD's near-future filter); None means all 1."""
    guidance: bool = False
    """A teacher continuation (TOPD), normalised by its own token count."""
    teacher_hidden: torch.Tensor | None = None
    """The teacher's view, cached: final hidden states `[len(response), H]` at the positions that
    predict each response token (on the CPU). The teacher is frozen, so these equal what the loss
    would recompute."""
    student_logprobs: torch.Tensor | None = None
    """log p_S(y_t) at the sampling temperature, `[len(response)]` (ReNIO)."""
    teacher_logprobs: torch.Tensor | None = None
    """log p_T(y_t) at the sampling temperature, `[len(response)]` (ReNIO)."""
    score: float | None = None
    """A method's per-sample score (ReNIO's s_i)."""
    raw_weight: float = 1.0
    """A method's unnormalised per-sample weight (ReNIO's exp(s_i / tau_w))."""
    labels: dict[str, str] = field(default_factory=dict)
    """Outcome labels the loss metrics are split by (TRD: `joint`, `target`); strings only."""


@dataclass
class View:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    rows: torch.Tensor  # [N] batch row of each response token's predicting position
    cols: torch.Tensor  # [N] column of that position


@dataclass
class ScoredBatch:
    student: View
    teacher: View | None
    targets: torch.Tensor  # [N] response token ids
    seq_index: torch.Tensor  # [N] which sequence each token belongs to
    lengths: torch.Tensor  # [B] response lengths
    passed: list[bool | None]
    sample_weights: torch.Tensor  # [B]
    token_weights: torch.Tensor | None = None  # [N] per-token weights u_t; None: all 1
    guidance: torch.Tensor | None = None  # [B] bool, TOPD's teacher continuations; None: none

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())


def _view(contexts: list[list[int]], responses: list[list[int]], pad_id: int) -> View:
    width = max(len(c) + len(r) for c, r in zip(contexts, responses))
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    rows, cols = [], []
    for b, (context, response) in enumerate(zip(contexts, responses)):
        seq = context + response
        ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, : len(seq)] = 1
        rows += [b] * len(response)
        cols += range(len(context) - 1, len(context) - 1 + len(response))
    return View(ids, mask, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))


def collate(seqs: list[TrainSequence], pad_id: int) -> ScoredBatch:
    if not seqs:
        raise ValueError("cannot collate an empty batch")
    if any(len(s.response) == 0 for s in seqs):
        raise ValueError("every sequence needs at least one response token")
    responses = [s.response for s in seqs]
    student = _view([s.student_prompt for s in seqs], responses, pad_id)
    teacher = None
    if all(s.teacher_prompt is not None for s in seqs):
        teacher = _view([s.teacher_prompt for s in seqs], [s.teacher_response or s.response for s in seqs], pad_id)
    return ScoredBatch(
        student=student,
        teacher=teacher,
        targets=torch.tensor([t for r in responses for t in r], dtype=torch.long),
        seq_index=torch.tensor([b for b, r in enumerate(responses) for _ in r], dtype=torch.long),
        lengths=torch.tensor([len(r) for r in responses], dtype=torch.long),
        passed=[s.passed for s in seqs],
        sample_weights=torch.tensor([s.sample_weight for s in seqs], dtype=torch.float32),
        token_weights=(torch.cat([s.token_weights.float() if s.token_weights is not None
                                  else torch.ones(len(s.response)) for s in seqs])
                       if any(s.token_weights is not None for s in seqs) else None),
        guidance=torch.tensor([s.guidance for s in seqs]) if any(s.guidance for s in seqs) else None,
    )
