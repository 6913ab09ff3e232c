"""Sequence objectives on whole responses: SFT, REDI, DPO, SimPO (the REDI paper; docs/methods.md).

Every function takes per-sequence *summed* response log-probs `log p(y|x)` [B] (and, where the
objective needs them, response token counts `|y|` [B]) and returns `(loss, metrics)`.

`loss` is `sum over the batch / normalizer`; `normalizer` defaults to the batch size (a plain mean).
Under gradient accumulation or several processes pass the *global* count of pairs (or sequences),
so the micro-batch losses add up to exactly the mean over the whole optimisation batch.

`metrics` maps a name to `(sum, count)` floats (no gradient), so that callers can add micro-batches
and processes before dividing. The collapse signature of the REDI paper is read off
`logp/chosen` and `logp/rejected` (mean per-token log-prob, averaged over pairs) falling together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Metrics = dict[str, tuple[float, float]]


def _normalizer(batch: int, normalizer: float | None) -> float:
    return float(batch) if normalizer is None else float(normalizer)


def _sums(values: torch.Tensor) -> tuple[float, float]:
    values = values.detach().float()
    return float(values.sum()), float(values.numel())


def _pair_metrics(chosen_per_token: torch.Tensor, rejected_per_token: torch.Tensor) -> Metrics:
    return {
        "logp/chosen": _sums(chosen_per_token),
        "logp/rejected": _sums(rejected_per_token),
        "logp/margin": _sums(chosen_per_token - rejected_per_token),
    }


def sft_loss(logps: torch.Tensor, lengths: torch.Tensor, *, normalizer: float | None = None
             ) -> tuple[torch.Tensor, Metrics]:
    """Supervised fine-tuning with per-sequence token means.

        L = (1/B) sum_i [ -log p(y_i | x_i) / |y_i| ]

    `logps` [B]: summed response log-probs; `lengths` [B]: response token counts.
    """
    per_token = logps / lengths.to(logps.dtype)
    loss = -per_token.sum() / _normalizer(len(logps), normalizer)
    return loss, {"logp/sequence": _sums(per_token)}


def redi_loss(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor, rejected_logps: torch.Tensor,
              rejected_lengths: torch.Tensor, *, alpha: float = 0.8, normalizer: float | None = None
              ) -> tuple[torch.Tensor, Metrics]:
    """REDI, the asymmetric REINFORCE-style objective on (x, y_w, y_l) pairs, no reference model.

        L = (1/P) sum_i [ -log p(y_w|x)/|y_w| + alpha * log p(y_l|x)/|y_l| ]

    alpha = 0 is SFT on the positives, alpha = 1 the symmetric objective (which the paper shows
    collapses: both log-probs fall); the authors' default is alpha = 0.8.
    """
    chosen = chosen_logps / chosen_lengths.to(chosen_logps.dtype)
    rejected = rejected_logps / rejected_lengths.to(rejected_logps.dtype)
    loss = (-chosen + alpha * rejected).sum() / _normalizer(len(chosen), normalizer)
    return loss, _pair_metrics(chosen, rejected)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, *, beta: float = 0.1, normalizer: float | None = None
             ) -> tuple[torch.Tensor, Metrics]:
    """DPO (sigmoid loss) with summed log-probs and a frozen reference:

        L = -(1/P) sum_i log sigmoid( beta * ((c - c_ref) - (r - r_ref)) )

    `rewards/*` are TRL's implicit rewards `beta * (logp - logp_ref)`. The per-token log-probs
    (`logp/*`) need lengths, so the caller adds them (see `pair_logp_metrics`).
    """
    chosen_reward = beta * (chosen_logps - ref_chosen_logps.to(chosen_logps.dtype))
    rejected_reward = beta * (rejected_logps - ref_rejected_logps.to(rejected_logps.dtype))
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    loss = losses.sum() / _normalizer(len(losses), normalizer)
    return loss, {
        "rewards/chosen": _sums(chosen_reward),
        "rewards/rejected": _sums(rejected_reward),
        "rewards/margin": _sums(chosen_reward - rejected_reward),
        "rewards/accuracy": _sums((chosen_reward > rejected_reward).float()),
    }


def simpo_loss(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor, rejected_logps: torch.Tensor,
               rejected_lengths: torch.Tensor, *, beta: float = 2.0, gamma: float = 1.0,
               normalizer: float | None = None) -> tuple[torch.Tensor, Metrics]:
    """SimPO: length-normalised margin with a target gap gamma, no reference model.

        L = -(1/P) sum_i log sigmoid( beta * (c/|c| - r/|r|) - gamma )

    (TRL's CPOTrainer with loss_type="simpo" writes the same as beta * (diff - gamma / beta).)
    """
    chosen = chosen_logps / chosen_lengths.to(chosen_logps.dtype)
    rejected = rejected_logps / rejected_lengths.to(rejected_logps.dtype)
    losses = -F.logsigmoid(beta * (chosen - rejected) - gamma)
    loss = losses.sum() / _normalizer(len(losses), normalizer)
    return loss, _pair_metrics(chosen, rejected)


def pair_logp_metrics(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor, rejected_logps: torch.Tensor,
                      rejected_lengths: torch.Tensor) -> Metrics:
    """Mean per-token log-prob of chosen and rejected responses and their margin (sum, count)."""
    return _pair_metrics(chosen_logps / chosen_lengths.to(chosen_logps.dtype),
                         rejected_logps / rejected_lengths.to(rejected_logps.dtype))
