"""From rollouts to the padded tensors a loss sees.

A `TrainSequence` is one response with its student context and (for distillation) its teacher
context. `collate` right-pads both views and records, for every response token, where the
position that predicts it sits in each view, so student and teacher rows line up token by token:
the prediction of response token j lives at position len(context) - 1 + j.

Method-specific data rides in `TrainSequence.extras`, by key: an `Extra` names the key, says
whether its value is per sample (a float, int or bool) or per token (a 1-D tensor of the
response's length), its dtype and the fill for sequences that lack it. `collate` turns every key
that some sequence of the batch carries into `ScoredBatch.extras[key]`: `[B]` per sample, `[N]`
per token in the order of `targets` (`ScoredBatch.per_row` right-pads it to `[B, T]`). A new
method declares its keys in its own module and reads them back with `Extra.get` / `Extra.of`;
nothing here changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar, Union

import torch

ExtraValue = Union[torch.Tensor, float, int, bool]
V = TypeVar("V", torch.Tensor, float, int, bool)

_EXTRAS: dict[str, "Extra"] = {}


class Extra(Generic[V]):
    """A typed key of `TrainSequence.extras`, registered by name when it is created.

    `per="token"`: the value is a 1-D tensor with one entry per response token; collated to `[N]`
    (the order of `ScoredBatch.targets`). `per="sample"`: a float, int or bool; collated to `[B]`.
    Sequences without the key get `fill` (per token: every position); a batch in which no sequence
    has it gets none (`of` returns None). Values are cast to `dtype` when collated, not when set.
    """

    def __init__(self, name: str, per: Literal["token", "sample"], dtype: torch.dtype, fill: float | bool = 0):
        if per not in ("token", "sample"):
            raise ValueError(f"extra {name!r}: per must be 'token' or 'sample', not {per!r}")
        self.name, self.per, self.dtype, self.fill = name, per, dtype, fill
        known = _EXTRAS.get(name)
        if known is not None and (known.per, known.dtype, known.fill) != (per, dtype, fill):
            raise ValueError(f"extra {name!r} is already registered as per {known.per}, {known.dtype}, fill "
                             f"{known.fill}")
        _EXTRAS[name] = self

    def __repr__(self) -> str:
        return f"Extra({self.name!r}, per={self.per!r}, dtype={self.dtype}, fill={self.fill!r})"

    def get(self, seq: "TrainSequence", default: V | None = None) -> V | None:
        """This key's value on `seq`, or `default` when it has none."""
        return seq.extras.get(self.name, default)  # type: ignore[return-value]

    def set(self, seq: "TrainSequence", value: V) -> None:
        """Store `value` on `seq`, checked against the key's shape (one entry per response token)."""
        _check(self, seq, value)
        seq.extras[self.name] = value

    def of(self, batch: "ScoredBatch") -> torch.Tensor | None:
        """The collated tensor (`[N]` per token, `[B]` per sample), or None when no sequence had it."""
        return batch.extras.get(self.name)


def extra(name: str) -> Extra:
    """The registered key called `name`."""
    try:
        return _EXTRAS[name]
    except KeyError:
        raise KeyError(f"extra {name!r} is not registered: declare it with Extra({name!r}, per=..., dtype=...)"
                       ) from None


def _check(key: Extra, seq: "TrainSequence", value) -> None:
    if key.per == "token":
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or len(value) != len(seq.response):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"extra {key.name!r} is per token: a 1-D tensor of the response's length "
                             f"{len(seq.response)}, not {shape}")
    elif not isinstance(value, (bool, int, float)):
        raise ValueError(f"extra {key.name!r} is per sample: a float, int or bool, not {type(value).__name__}")


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
    teacher_hidden: torch.Tensor | None = None
    """The teacher's view, cached: final hidden states `[len(response), H]` at the positions that
    predict each response token (on the CPU). The teacher is frozen, so these equal what the loss
    would recompute."""
    labels: dict[str, str] = field(default_factory=dict)
    """Outcome labels the loss metrics are split by (TRD: `joint`, `target`); strings only."""
    extras: dict[str, ExtraValue] = field(default_factory=dict)
    """Method-specific data by `Extra` key (ReNIO's log-probs and weights, TOPD's token weights and
    guidance flag, a plugin's own); set and read through the key (`KEY.set(seq, v)`, `KEY.get(seq)`)."""


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
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Every `Extra` some sequence carried: `[N]` per token, `[B]` per sample (read with `Extra.of`)."""

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())

    def per_row(self, key: Extra) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A per-token extra right-padded to `[B, T]` (zeros after each response) with the `[B, T]`
        bool mask of real entries; None when no sequence had it."""
        flat = key.of(self)
        if flat is None:
            return None
        if key.per != "token":
            raise ValueError(f"extra {key.name!r} is per sample, not per token")
        width = int(self.lengths.max())
        mask = torch.arange(width)[None, :] < self.lengths[:, None]
        out = torch.zeros(mask.shape, dtype=flat.dtype)
        out[mask] = flat
        return out, mask


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
        extras=collate_extras(seqs),
    )


def collate_extras(seqs: list[TrainSequence]) -> dict[str, torch.Tensor]:
    """Every extra key that some sequence of `seqs` carries, collated by its registered `Extra`."""
    names = list(dict.fromkeys(name for s in seqs for name in s.extras))
    out = {}
    for name in names:
        key = extra(name)
        values = [s.extras.get(name) for s in seqs]
        for s, v in zip(seqs, values):
            if v is not None:
                _check(key, s, v)
        if key.per == "token":
            out[name] = torch.cat([v.to(key.dtype) if v is not None
                                   else torch.full((len(s.response),), key.fill, dtype=key.dtype)
                                   for s, v in zip(seqs, values)])
        else:
            out[name] = torch.tensor([key.fill if v is None else v for v in values], dtype=key.dtype)
    return out
