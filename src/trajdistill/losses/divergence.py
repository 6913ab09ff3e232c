"""Per-token full-vocabulary divergences between student and teacher logits.

Notation (docs/methods.md): `p_S = softmax(z_S / tau)`, `p_T = softmax(z_T / tau)` over the vocabulary V.

- forward KL   `D_t = sum_v p_T(v) (log p_T(v) - log p_S(v))`
- reverse KL   `D_t = sum_v p_S(v) (log p_S(v) - log p_T(v))`
- generalized JSD(beta), `m = beta p_T + (1 - beta) p_S`:
  `D_t = beta KL(p_T || m) + (1 - beta) KL(p_S || m)`; beta = 0 is forward KL, beta = 1 reverse KL.

Options, applied in this order: teacher top-k restriction, per-vocab clip of the summands
`sum_v clamp(d_v, 0, c)`, sum over v, per-token clip `min(D_t, c)`.

The teacher is always a constant (detached); gradients flow into the student logits only.
`token_divergence` is the dense per-row core: the chunked path (`chunked_divergence_from_hidden`)
runs it on one chunk of logits at a time wherever it has no closed-form gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
_ALIASES = {"generalized_jsd": "jsd", "fkl": "forward_kl", "rkl": "reverse_kl"}


def canonical_divergence(name: str, beta: float = 0.5) -> tuple[str, float]:
    """Map a divergence name (and beta) to one of `forward_kl`, `reverse_kl`, `jsd`.

    `jsd` with beta = 0 is forward KL and with beta = 1 reverse KL (docs/methods.md, same as TRL), so
    those two are routed to the exact KL formulas rather than the degenerate mixture.
    """
    name = _ALIASES.get(name, name)
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; expected one of {DIVERGENCES}")
    if name == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
        if beta == 0.0:
            return "forward_kl", beta
        if beta == 1.0:
            return "reverse_kl", beta
    return name, beta


def _log_tail(logp_k: torch.Tensor) -> torch.Tensor:
    """`log(1 - sum_K p)` from the top-k log-probs, clamped to a finite floor.

    The floor (`log(tiny)`, a probability of ~1e-38 in fp32) keeps `0 * log 0` terms and their
    gradients finite when the k ids hold all the mass; the term it changes is below 1e-30.
    """
    mass = torch.logsumexp(logp_k, dim=-1, keepdim=True).clamp(max=0.0)
    tail = -torch.expm1(mass)
    return tail.clamp(min=torch.finfo(tail.dtype).tiny).log()


def _restricted_logprobs(
    student: torch.Tensor, teacher: torch.Tensor, top_k: int | None, tail_bucket: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of both models over the outcome set the divergence is taken on.

    No top-k: the full vocabulary. Top-k: the teacher's k highest ids `K`, each model renormalised
    over `K` (softmax of the selected logits). Top-k with tail bucket: full-vocabulary log-probs on
    `K` plus one bucket `log(1 - sum_K p)` per model (k + 1 outcomes, both proper).
    Inputs are logits already divided by the temperature.
    """
    if top_k is None or top_k >= student.shape[-1]:
        return F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1)
    ids = teacher.topk(top_k, dim=-1).indices
    if not tail_bucket:
        return F.log_softmax(student.gather(-1, ids), -1), F.log_softmax(teacher.gather(-1, ids), -1)
    logp_s = F.log_softmax(student, dim=-1).gather(-1, ids)
    logp_t = F.log_softmax(teacher, dim=-1).gather(-1, ids)
    logp_s = torch.cat([logp_s, _log_tail(logp_s)], dim=-1)
    logp_t = torch.cat([logp_t, _log_tail(logp_t)], dim=-1)
    return logp_s, logp_t


def _summands(logp_s: torch.Tensor, logp_t: torch.Tensor, divergence: str, beta: float) -> torch.Tensor:
    """Per-outcome summands `d_v` whose sum over v is the divergence."""
    if divergence == "forward_kl":
        return logp_t.exp() * (logp_t - logp_s)
    if divergence == "reverse_kl":
        return logp_s.exp() * (logp_s - logp_t)
    # log m = logsumexp(log beta + log p_T, log(1 - beta) + log p_S), stable for tiny probabilities
    log_m = torch.logaddexp(logp_t + math.log(beta), logp_s + math.log1p(-beta))
    return beta * logp_t.exp() * (logp_t - log_m) + (1.0 - beta) * logp_s.exp() * (logp_s - log_m)


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_clip: float | None = None,
    token_clip: float | None = None,
    top_k: int | None = None,
    tail_bucket: bool = False,
) -> torch.Tensor:
    """`D_t` for every row of `[..., V]` logits, no masking; the shared core of all paths.

    Args: `divergence` (`forward_kl`, `reverse_kl`, `jsd` with `beta`), temperature `tau`,
    per-vocab clip `c` (`sum_v clamp(d_v, 0, c)`), per-token clip `c` (`min(D_t, c)`), teacher
    top-k `k`, tail bucket. Computed in at least fp32. Order: top-k restriction, per-vocab clip,
    sum, per-token clip.

    `jsd` follows TRL's `GKDTrainer.generalized_jsd_loss` (`trl.experimental.gkd.gkd_trainer`,
    trl 1.16): its mixture is `logsumexp(log p_S + log(1 - beta), log p_T + log beta)`, it returns
    `beta * kl_div(m, p_T) + (1 - beta) * kl_div(m, p_S)` where `kl_div(input, target)` is
    `KL(target || input)`, and its beta = 0 branch is `KL(p_T || p_S)`. So the same beta means the
    same divergence in both; no mapping is needed.
    """
    divergence, beta = canonical_divergence(divergence, beta)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student = student_logits.to(dtype) / temperature
    teacher = teacher_logits.detach().to(dtype) / temperature
    logp_s, logp_t = _restricted_logprobs(student, teacher, top_k, tail_bucket)
    terms = _summands(logp_s, logp_t, divergence, beta)
    if vocab_clip is not None:
        terms = terms.clamp(0.0, vocab_clip)
    per_token = terms.sum(-1)
    if token_clip is not None:
        per_token = per_token.clamp(max=token_clip)
    return per_token
