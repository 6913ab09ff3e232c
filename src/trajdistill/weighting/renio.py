"""ReNIO sample weights: up-weight rollouts whose sampled tokens the teacher finds unlikely (the ReNIO paper).

- `r_t = min(log p_S(y_t) - log p_T(y_t), C)` on the sampled tokens (both at the sampling temperature)
- pivotal tokens `P_i = {t : r_t >= delta}`, score `s_i = mean_{t in P_i} r_t` (0 if `P_i` is empty)
- `w_i = exp(s_i / tau_w)`, divided by the mean of `w` over the whole optimisation batch, then
  capped at 10 (cap after normalising, as the authors do). No gradient flows through `w`.

The authors normalise within each device's micro-batch (a micro-batch of one makes every weight 1).
We normalise over the whole optimisation batch, across processes (`normalize="batch"`);
`normalize="micro"` reproduces the authors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def renio_scores(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    ratio_cap: float,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(s [B], has_pivotal [B] bool)` from sampled-token log-probs `[B, T]`.

    `r_t = min(log p_S(y_t) - log p_T(y_t), C)` with `C = ratio_cap`; pivotal iff `r_t >= delta`
    (`delta = threshold`) on a response position; `s_i` = mean of `r_t` over pivotal tokens, 0 if none.
    `s_i` is the rollout's "looks wrong to the teacher" score (report its ROC AUC vs the verifier).
    """
    with torch.no_grad():
        ratio = (student_logp.double() - teacher_logp.double()).clamp(max=ratio_cap)
        pivotal = mask.bool() & (ratio >= threshold)
        count = pivotal.sum(-1)
        total = torch.where(pivotal, ratio, torch.zeros_like(ratio)).sum(-1)
        scores = total / count.clamp(min=1)
    return scores.to(student_logp.dtype), count > 0


def renio_raw_weights(scores: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """`exp(s_i / tau_w)`, before normalisation (1 for a rollout with no pivotal token)."""
    return torch.exp(scores.detach() / tau)


def global_mean(values: torch.Tensor, group=None) -> torch.Tensor:
    """Mean of `values` over every process: all-reduce of (sum, count); local mean when not distributed.

    For gradient accumulation, call it on the raw weights of all micro-batches of the optimisation
    batch (e.g. `torch.cat`) and pass the result as `batch_mean`.
    """
    stats = torch.stack([values.detach().double().sum(), torch.tensor(float(values.numel()), dtype=torch.float64)])
    if dist.is_available() and dist.is_initialized():
        stats = stats.to(values.device)
        dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
    return (stats[0] / stats[1].clamp(min=1.0)).to(values.dtype)


def renio_sample_weights(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    ratio_cap: float,
    threshold: float,
    tau: float = 1.0,
    weight_cap: float = 10.0,
    normalize: str = "batch",
    batch_mean: float | torch.Tensor | None = None,
    group=None,
) -> torch.Tensor:
    """ReNIO weights `[B]`: `min(exp(s_i / tau) / mean_batch exp(s / tau), weight_cap)`, no grad.

    Args:
        student_logp, teacher_logp: `[B, T]` log-probs of the sampled tokens at the sampling
            temperature (ReNIO's default 1.1). mask: `[B, T]` response positions.
        ratio_cap: `C` (OPD 2.0, OPSD 2.5). threshold: `delta` (OPD 1.0, OPSD 0.8). tau: `tau_w`.
        normalize: `"batch"` divides by the mean over the optimisation batch: `batch_mean` if
            given (e.g. `global_mean` of all micro-batches' raw weights), else the mean of this
            call's raw weights over all processes (`global_mean`, all-reduce when distributed).
            `"micro"` divides by this call's local mean (the authors' behaviour).
    """
    scores, _ = renio_scores(student_logp, teacher_logp, mask, ratio_cap=ratio_cap, threshold=threshold)
    raw = renio_raw_weights(scores, tau)
    if normalize == "micro":
        mean = raw.mean()
    elif normalize == "batch":
        mean = global_mean(raw, group) if batch_mean is None else torch.as_tensor(batch_mean, dtype=raw.dtype)
    else:
        raise ValueError(f"normalize must be 'batch' or 'micro', got {normalize!r}")
    return (raw / mean).clamp(max=weight_cap)
