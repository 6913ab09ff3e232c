"""TOPD step 1, the near-future filter (TOPD paper; our formulation, no public code exists).

Among high-loss tokens, the top `q` fraction of `D_t` over the batch's response tokens, keep a
token only if the near future is also divergent:
`F_t = mean of D_{t+1..t+K}` over the response positions of the same rollout that exist, kept iff
`F_t >= rho * mean D` (mean over the batch's response tokens). A high-loss token with no future
response position is kept. Filtered tokens get weight 0, all others weight 1.
Defaults q = 0.2, K = 8, rho = 1.0 are our choice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _high_loss(values: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """Response tokens whose `D_t` is at least the `ceil(q n)`-th largest of the n response values.

    Ties at the threshold are all included, so on tied values slightly more than `q n` can be marked.
    """
    response = values[mask]
    count = math.ceil(quantile * response.numel() - 1e-9)
    if count <= 0:
        return torch.zeros_like(mask)
    threshold = response.topk(count).values[-1]
    return mask & (values >= threshold)


def _future_window_mean(values: torch.Tensor, mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mean of D over response positions t+1..t+K, number of such positions)`, both `[B, T]`."""
    masked = torch.where(mask, values, torch.zeros_like(values))
    # prefix sums with a leading 0: sum over (t, t + K] = c[min(t + K, T)] - c[t] in 1-based prefix terms
    cum = F.pad(masked.cumsum(-1), (1, 0))
    cum_n = F.pad(mask.to(values.dtype).cumsum(-1), (1, 0))
    length = values.shape[-1]
    start = torch.arange(1, length + 1, device=values.device)
    end = (start + window).clamp(max=length)
    total = cum[:, end] - cum[:, start]
    count = cum_n[:, end] - cum_n[:, start]
    return total / count.clamp(min=1.0), count


def near_future_filter(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    quantile: float = 0.2,
    window: int = 8,
    rho: float = 1.0,
) -> torch.Tensor:
    """Token weights `[B, T]` in {0, 1} for the near-future filter (see the module docstring).

    `per_token_loss` `[B, T]` is `D_t` (detached; e.g. the reverse KL per token), `mask` the
    response positions. Weight 0 marks a high-loss token whose next `window` response positions
    average below `rho * mean D`; every other position (including padding) has weight 1.
    Statistics are over this call's tokens (pass the whole batch to filter batch-wide).
    """
    with torch.no_grad():
        values = per_token_loss.detach().double()
        mask = mask.bool()
        if not mask.any():
            return torch.ones_like(values, dtype=per_token_loss.dtype)
        high = _high_loss(values, mask, quantile)
        future_mean, future_count = _future_window_mean(values, mask, window)
        mean_loss = values[mask].mean()
        keep = (future_count == 0) | (future_mean >= rho * mean_loss)
        filtered = high & ~keep
    return (~filtered).to(per_token_loss.dtype)


def filtered_fraction(token_weights: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of response tokens the filter dropped (weight 0), for logging."""
    mask = mask.bool()
    total = int(mask.sum())
    return float(((token_weights == 0) & mask).sum()) / max(total, 1)
