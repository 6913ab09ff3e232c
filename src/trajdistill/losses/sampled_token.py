"""The sampled-token estimator of on-policy distillation, straight from hidden states.

With `y_t` the sampled token at position t (the student's own rollout), `w_t` per-token weights
and `Z` the normaliser (docs/methods.md):

    A_t = sg(log p_T(y_t) - log p_S(y_t))
    L   = -sum_t w_t A_t log p_S(y_t) / Z

Its gradient is `-sum_t w_t A_t grad log p_S(y_t) / Z`, the policy-gradient form of reverse KL with
a per-token reward `log p_T - log p_S`. Only the sampled token's log-prob is needed, so each model's
logits live one chunk of positions at a time (`token_logprobs`).
"""

from __future__ import annotations

import torch

from trajdistill.losses.logprobs import token_logprobs


def sampled_token_objective(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    normalizer: float | torch.Tensor,
    *,
    temperature: float,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled-token loss over `N` response positions.

    Args:
        student_hidden: `[N, H]` final hidden states, position t predicting `targets[t]`; with grad.
        student_head: `[V, H]` LM head weight of the student (gradients flow into it if it has grad).
        teacher_hidden, teacher_head: `[N, H_T]`, `[V, H_T]`; a constant (no gradient).
        targets: `[N]` sampled token ids `y_t`.
        token_weights: `[N]` weights `w_t` (sample weight, sequence-mean factor, ...); no gradient
            flows into them.
        normalizer: `Z`, e.g. the token count of the whole optimisation batch.
        temperature: `tau` of both softmaxes; chunk_size: positions per chunk.

    Returns:
        `(loss, per_token)`: the scalar loss and the detached `-A_t = log p_S(y_t) - log p_T(y_t)`,
        the per-token sampled estimate of `KL(p_S || p_T)`, for logging.
    """
    student = token_logprobs(student_hidden, student_head, targets, temperature=temperature, chunk_size=chunk_size)
    with torch.no_grad():
        teacher = token_logprobs(teacher_hidden, teacher_head, targets, temperature=temperature,
                                 chunk_size=chunk_size)
    advantage = (teacher - student).detach()
    loss = -(token_weights.detach() * advantage * student).sum() / normalizer
    return loss, -advantage
