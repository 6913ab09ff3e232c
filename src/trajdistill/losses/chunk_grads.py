"""Per-token divergence and its gradient w.r.t. one chunk of student logits.

With `z` the student logits, `s = z / tau`, `q = p_S = softmax(s)`, `p = p_T`, and the identity
`dD/ds_j = q_j (g_j - sum_i q_i g_i)` for `g_i = dD/dq_i` (chain rule through the softmax):

- forward KL: `g_i = -p_i / q_i`, so `dD/ds = q - p`.
- reverse KL: `g_i = log q_i - log p_i + 1`, so `dD/ds = q (log q - log p - D)`.
- JSD(beta), `m = beta p + (1 - beta) q`, `D = beta sum p log p + (1 - beta) sum q log q - sum m log m`:
  `g_i = (1 - beta)(log q_i - log m_i)`, so `dD/ds = (1 - beta) q (log q - log m - KL(q || m))`.

and `dD/dz = dD/ds / tau`; a per-token clip `min(D, c)` zeroes the gradient where `D > c`.
Per-vocab clip and top-k fall back to a local autograd pass over the chunk.
The closed forms reuse the chunk's buffers in place: about three (KL) or five (JSD) `chunk x V`
buffers are alive at once.
"""

from __future__ import annotations

import torch

from trajdistill.losses.divergence import token_divergence


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`sum_v a[n, v] b[n, v]` without a `[n, V]` temporary (a batched matrix product)."""
    return (a.unsqueeze(1) @ b.unsqueeze(-1)).view(-1)


def _log_softmax_(x: torch.Tensor) -> torch.Tensor:
    return x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))


def _forward_kl(lq, lp):
    p = lp.exp()
    values = _rowdot(p, lp.sub_(lq))
    return values, lq.exp_().sub_(p)


def _reverse_kl(lq, lp):
    f = lp.neg_().add_(lq)  # log q - log p, in the teacher's buffer
    q = lq.exp_()
    values = _rowdot(q, f)
    return values, f.sub_(values[:, None]).mul_(q)


def _jsd(lq, lp, beta):
    q, p = lq.exp(), lp.exp()
    # clamp: if both probabilities underflow, log m stays finite and 0 * (log p - log m) stays 0
    log_m = (p * beta).add_(q, alpha=1.0 - beta).clamp_(min=torch.finfo(q.dtype).tiny).log_()
    kl_teacher = _rowdot(p, lp.sub_(log_m))
    del p
    kl_student = _rowdot(q, lq.sub_(log_m))
    values = beta * kl_teacher + (1.0 - beta) * kl_student
    return values, lq.sub_(kl_student[:, None]).mul_(q).mul_(1.0 - beta)


def closed_form_divergence_and_grad(logits, teacher_logits, scale, *, divergence, beta, temperature, token_clip):
    """`(D [n], scale_t * dD_t/dz [n, V])`; overwrites `logits` and `teacher_logits` (fresh buffers)."""
    lq = _log_softmax_(logits.div_(temperature) if temperature != 1.0 else logits)
    lp = teacher_logits.to(lq.dtype)
    lp = _log_softmax_(lp.div_(temperature) if temperature != 1.0 else lp)
    if divergence == "forward_kl":
        values, grad = _forward_kl(lq, lp)
    elif divergence == "reverse_kl":
        values, grad = _reverse_kl(lq, lp)
    else:
        values, grad = _jsd(lq, lp, beta)
    coef = scale.to(grad.dtype) / temperature
    if token_clip is not None:
        coef = coef * (values <= token_clip)
        values = values.clamp(max=token_clip)
    return values, grad.mul_(coef[:, None])


def autograd_divergence_and_grad(logits, teacher_logits, scale, **options):
    """`(D [n], scale_t * dD_t/dz [n, V])` by a local autograd pass over `token_divergence`."""
    with torch.enable_grad():
        z = logits.detach().requires_grad_(True)
        values = token_divergence(z, teacher_logits, **options)
        (grad,) = torch.autograd.grad((values * scale.to(values.dtype)).sum(), z)
    return values.detach(), grad


def chunk_divergence_and_grad(logits, teacher_logits, scale, *, divergence, beta, temperature,
                              vocab_clip, token_clip, top_k, tail_bucket):
    """Divergence per row of a chunk and the scaled gradient w.r.t. the chunk's student logits.

    `divergence` must already be canonical (see `canonical_divergence`). `logits` and
    `teacher_logits` must be buffers the caller does not reuse: they are overwritten.
    """
    if vocab_clip is None and (top_k is None or top_k >= logits.shape[-1]):
        return closed_form_divergence_and_grad(logits, teacher_logits, scale, divergence=divergence, beta=beta,
                                               temperature=temperature, token_clip=token_clip)
    return autograd_divergence_and_grad(logits, teacher_logits, scale, divergence=divergence, beta=beta,
                                        temperature=temperature, vocab_clip=vocab_clip, token_clip=token_clip,
                                        top_k=top_k, tail_bucket=tail_bucket)
