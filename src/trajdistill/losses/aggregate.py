"""Reduce per-token values `D_t` to the scalar loss of one micro-batch, batch-correctly.

The normaliser is the count over the whole optimisation batch (every micro-batch of the gradient
accumulation, every process), not the micro-batch's own count: summing the micro-batch losses then
gives exactly the full-batch loss and gradient. (TRL's GKD fix, issue #4719: per-micro-batch means
weight short micro-batches' tokens more.)

Under DDP, which *averages* gradients over the `W` processes, scale the loss by `W` (or pass
`num_tokens / W`) to get the full-batch gradient; with a plain all-reduce-sum no scaling is needed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def global_sum(value: torch.Tensor | float, group=None) -> torch.Tensor:
    """Sum a scalar or tensor over all processes (identity when torch.distributed is not initialised).

    Use it for the batch token count: `global_sum(sum(m.sum() for m in micro_batch_masks))`.
    """
    total = torch.as_tensor(value, dtype=torch.float64).clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: str = "token",
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar loss from per-token values `D [B, T]` on response positions `mask [B, T]`.

    With sample weights `w_i` (ReNIO; default 1) and token weights `u_t` (TOPD; default 1):

    - `mode="token"`:    `L = sum_i sum_t w_i u_t m_t D_t / N`, `N = num_tokens` (default: this
      call's `sum m`). Pass the whole batch's token count for gradient accumulation.
    - `mode="sequence"`: `L = sum_i w_i (sum_t u_t m_t D_t / sum_t m_t) / S`, `S = num_sequences`
      (default: this call's B). A sequence with no response token contributes 0.

    Token weights scale summands but do not change the denominators: a filtered token (u = 0) is
    dropped from the numerator, not from the count, so the filter never inflates the other tokens.
    The weights are treated as constants (detached).
    """
    mask = mask.to(per_token.dtype)
    values = per_token * mask
    if token_weights is not None:
        values = values * token_weights.detach().to(per_token.dtype)
    if mode == "token":
        per_sequence = values.sum(-1)
        denominator = mask.sum() if num_tokens is None else num_tokens
    elif mode == "sequence":
        per_sequence = values.sum(-1) / mask.sum(-1).clamp(min=1.0)
        denominator = per_token.shape[0] if num_sequences is None else num_sequences
    else:
        raise ValueError(f"aggregate mode must be 'token' or 'sequence', got {mode!r}")
    if sample_weights is not None:
        per_sequence = per_sequence * sample_weights.detach().to(per_token.dtype)
    denominator = torch.as_tensor(denominator, dtype=per_token.dtype, device=per_token.device)
    # an empty batch gives 0, not 0/0
    return per_sequence.sum() / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
