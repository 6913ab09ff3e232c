"""Brute-force oracles on full `[..., V]` logits, for the tests and benchmarks only.

Production computes every loss from hidden states in chunks (`trajdistill.losses`); these are the
dense, masked, per-token forms it must agree with, and the reduction to a batch loss:

- `per_token_divergence`, `forward_kl`, `reverse_kl`, `generalized_jsd`: `D_t` of
  `trajdistill.losses.token_divergence` on `[B, T, V]` logits, 0 where `mask` is 0.
- `sampled_token_logprobs`, `sampled_token_loss`, `sampled_token_loss_from_logprobs`: the
  sampled-token estimator `-A_t log p_S(y_t)`, `A_t = sg(log p_T(y_t) - log p_S(y_t))`.
- `aggregate`, `global_sum`: per-token values to the scalar loss of one micro-batch.

Aggregation: the normaliser is the count over the whole optimisation batch (every micro-batch of the
gradient accumulation, every process), not the micro-batch's own count: summing the micro-batch
losses then gives exactly the full-batch loss and gradient. (TRL's GKD fix, issue #4719:
per-micro-batch means weight short micro-batches' tokens more.) Under DDP, which *averages*
gradients over the `W` processes, scale the loss by `W` (or pass `num_tokens / W`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trajdistill.losses.divergence import token_divergence


def per_token_divergence(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    **options,
) -> torch.Tensor:
    """Dispatch by name (`forward_kl`, `reverse_kl`, `jsd`): per-token values `[...]`, 0 off-mask.

    `options` are those of `token_divergence` (beta, temperature, vocab_clip, token_clip, top_k,
    tail_bucket). Only masked positions are computed, so padding logits never enter.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ")
    if mask is None:
        return token_divergence(student_logits, teacher_logits, divergence=name, **options)
    mask = mask.bool()
    values = token_divergence(student_logits[mask], teacher_logits[mask], divergence=name, **options)
    out = values.new_zeros(mask.shape)
    return out.masked_scatter(mask, values)


def forward_kl(student_logits, teacher_logits, mask=None, *, temperature=1.0, vocab_clip=None,
               token_clip=None, top_k=None, tail_bucket=False) -> torch.Tensor:
    """Forward KL per token: `D_t = sum_v p_T(v) (log p_T(v) - log p_S(v))` (mode-covering).

    Args: logits `[B, T, V]` (any leading shape), mask `[B, T]` of response positions,
    temperature `tau`, per-vocab clip `c` (`sum_v clamp(d_v, 0, c)`), per-token clip `c`
    (`min(D_t, c)`), teacher top-k `k`, tail bucket. Returns `[B, T]`, 0 where mask is 0.
    """
    return per_token_divergence("forward_kl", student_logits, teacher_logits, mask, temperature=temperature,
                                vocab_clip=vocab_clip, token_clip=token_clip, top_k=top_k, tail_bucket=tail_bucket)


def reverse_kl(student_logits, teacher_logits, mask=None, *, temperature=1.0, vocab_clip=None,
               token_clip=None, top_k=None, tail_bucket=False) -> torch.Tensor:
    """Reverse KL per token: `D_t = sum_v p_S(v) (log p_S(v) - log p_T(v))` (mode-seeking).

    Same arguments and return as `forward_kl`.
    """
    return per_token_divergence("reverse_kl", student_logits, teacher_logits, mask, temperature=temperature,
                                vocab_clip=vocab_clip, token_clip=token_clip, top_k=top_k, tail_bucket=tail_bucket)


def generalized_jsd(student_logits, teacher_logits, mask=None, *, beta=0.5, temperature=1.0, vocab_clip=None,
                    token_clip=None, top_k=None, tail_bucket=False) -> torch.Tensor:
    """Generalized JSD (GKD) per token, `m = beta p_T + (1 - beta) p_S`:

    `D_t = beta KL(p_T || m) + (1 - beta) KL(p_S || m)`; beta = 0 is forward KL, beta = 1 reverse KL.

    TRL's `GKDTrainer.generalized_jsd_loss` convention (see `token_divergence`).
    Other arguments and the return as `forward_kl`.
    """
    return per_token_divergence("jsd", student_logits, teacher_logits, mask, beta=beta, temperature=temperature,
                                vocab_clip=vocab_clip, token_clip=token_clip, top_k=top_k, tail_bucket=tail_bucket)


def sampled_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`log p(y_t)` of the given tokens `[B, T]` under `softmax(logits / tau)` `[B, T, V]`."""
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def sampled_token_loss_from_logprobs(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Sampled-token estimator per token: `-A_t log p_S(y_t)`, `A_t = stopgrad(log p_T(y_t) - log p_S(y_t))`.

    Its gradient is `-A_t grad log p_S(y_t)`, the policy-gradient form of reverse KL with a
    per-token reward `log p_T - log p_S` (on-policy distillation blog). Returns `[B, T]`, 0 off-mask.
    """
    advantage = (teacher_logp.detach() - student_logp.detach())
    loss = -advantage * student_logp
    return loss if mask is None else torch.where(mask.bool(), loss, torch.zeros_like(loss))


def sampled_token_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Sampled-token estimator from logits: `logits[:, t]` must be the distribution of `tokens[:, t]`.

    See `sampled_token_loss_from_logprobs`; log-probs are taken at temperature `tau`.
    """
    student_logp = sampled_token_logprobs(student_logits, tokens, temperature)
    with torch.no_grad():
        teacher_logp = sampled_token_logprobs(teacher_logits, tokens, temperature)
    return sampled_token_loss_from_logprobs(student_logp, teacher_logp, mask)


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


def sampled_token_objective_dense(student_hidden, student_head, teacher_hidden, teacher_head, targets,
                                  token_weights, normalizer, *, temperature=1.0):
    """`-sum_t w_t A_t log p_S(y_t) / Z` from full `[N, V]` logits `h W^T`: `(loss, -A_t)`."""
    student_logits = student_hidden @ student_head.T
    teacher_logits = teacher_hidden @ teacher_head.T
    student_logp = sampled_token_logprobs(student_logits, targets, temperature)
    teacher_logp = sampled_token_logprobs(teacher_logits.detach(), targets, temperature)
    per_token = sampled_token_loss_from_logprobs(student_logp, teacher_logp)
    return (token_weights * per_token).sum() / normalizer, (student_logp - teacher_logp).detach()
