"""Fused LM head + divergence, chunk by chunk of positions: memory O(chunk x V), never O(N x V).

The forward pass computes the loss *and* its gradients (w.r.t. the student hidden states, the LM
head weight and bias) chunk by chunk, so no `[B, T, V]` student tensor and no autograd graph over
the vocabulary outlives one chunk; backward only scales the stored gradients by `grad_output`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trajdistill.losses.chunk_grads import chunk_divergence_and_grad
from trajdistill.losses.divergence import canonical_divergence

TeacherChunk = Callable[[torch.Tensor], torch.Tensor]
ChunkObserver = Callable[[int, torch.Tensor, torch.Tensor], None]

UPCAST_ELEMENTS = 2**26
"""At most this many elements of a lower-precision LM head are upcast at once (256 MB in fp32):
a bf16 head is never copied to fp32 whole (Qwen3-8B's 151,936 x 4,096 would be 2.5 GB per copy)."""


def _vocab_slices(weight: torch.Tensor) -> list[slice]:
    step = max(1, UPCAST_ELEMENTS // max(weight.shape[1], 1))
    return [slice(v, v + step) for v in range(0, weight.shape[0], step)]


def _same_dtype(dtype, *tensors) -> bool:
    return all(t is None or t.dtype == dtype for t in tensors)


def head_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype) -> torch.Tensor:
    """`h @ W^T (+ b)` `[n, V]` computed in `dtype` (`h` already in it). A head in `dtype` is used as
    it is; a head in another dtype (bf16/fp16 under an fp32 loss) is upcast one vocabulary slice at
    a time, so the products are the fp32 ones without a whole fp32 copy of the head."""
    if _same_dtype(dtype, weight, bias):
        return h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    out = torch.empty((h.shape[0], weight.shape[0]), dtype=dtype, device=h.device)
    for v in _vocab_slices(weight):
        w = weight[v].to(dtype)
        out[:, v] = h @ w.T if bias is None else torch.addmm(bias[v].to(dtype), h, w.T)
    return out


def _through_head(grad_logits: torch.Tensor, weight: torch.Tensor, dtype) -> torch.Tensor:
    """`grad_logits @ W` `[n, H]` in `dtype`, upcasting a head in another dtype slice by slice."""
    if weight.dtype == dtype:
        return grad_logits @ weight
    out = None
    for v in _vocab_slices(weight):
        part = grad_logits[:, v] @ weight[v].to(dtype)
        out = part if out is None else out.add_(part)
    return out


class _FusedDivergence(torch.autograd.Function):
    """`loss = sum_t w_t D_t / normalizer` over rows of `hidden [N, H]`; see the public wrapper."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, token_weights, teacher_chunk, options, normalizer, chunk_size, observe):
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        device = hidden.device
        grad_hidden = torch.zeros(hidden.shape, dtype=dtype, device=device) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=dtype, device=device) if need_bias else None
        per_token = torch.zeros(hidden.shape[0], dtype=dtype, device=device)
        scale = token_weights.to(dtype) / normalizer
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows].to(dtype)
            logits = head_logits(h, weight, bias, dtype)
            teacher = teacher_chunk(torch.arange(start, start + h.shape[0], device=device))
            if observe is not None:
                observe(start, logits, teacher)
            values, grad_logits = chunk_divergence_and_grad(logits, teacher, scale[rows], **options)
            per_token[rows] = values
            if need_hidden:
                grad_hidden[rows] = _through_head(grad_logits, weight, dtype)
            if need_weight:
                grad_weight.addmm_(grad_logits.T, h)
            if need_bias:
                grad_bias += grad_logits.sum(0)
            del logits, grad_logits
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        ctx.has = (need_hidden, need_weight, need_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        loss = (per_token * scale).sum()
        ctx.mark_non_differentiable(per_token)
        # the scalar stays in the fp32 compute dtype: a bf16 loss would keep ~3 significant digits
        return loss, per_token

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_token):
        saved = iter(ctx.saved_tensors)
        grads = []
        for has, dtype in zip(ctx.has, ctx.dtypes):
            grads.append((next(saved) * grad_loss).to(dtype) if has else None)
        return (*grads, None, None, None, None, None, None)


def _teacher_chunker(rows, teacher_logits, teacher_hidden, teacher_head_weight, teacher_head_bias) -> TeacherChunk:
    """Return `f(chunk_index) -> teacher logits [n, V]` for the given flattened selected rows."""
    if (teacher_logits is None) == (teacher_hidden is None):
        raise ValueError("give exactly one of teacher_logits or teacher_hidden (+ teacher_head_weight)")
    if teacher_logits is not None:
        flat = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
        return lambda idx: flat[rows[idx]]
    if teacher_head_weight is None:
        raise ValueError("teacher_hidden needs teacher_head_weight")
    flat_h = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    w = teacher_head_weight.detach()  # in its own dtype: upcast per vocabulary slice in head_logits
    b = None if teacher_head_bias is None else teacher_head_bias.detach()

    def chunk(idx):
        return head_logits(flat_h[rows[idx]].float(), w, b, torch.float32)

    return chunk


def chunked_divergence_from_hidden(
    student_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head_weight: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | None = None,
    lm_head_bias: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_clip: float | None = None,
    token_clip: float | None = None,
    top_k: int | None = None,
    tail_bucket: bool = False,
    token_weights: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int = 512,
    observe: ChunkObserver | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted full-vocabulary divergence straight from final hidden states, in chunks of positions.

    `loss = sum_{t in mask} w_t D_t / normalizer`, with `z_S = h_t W^T (+ b)` the student logits and
    `D_t` exactly as `trajdistill.losses.token_divergence` (same options, same order: teacher
    top-k, per-vocab clip, sum, per-token clip). Gradients flow into `student_hidden`,
    `lm_head_weight` and `lm_head_bias` (whichever require grad); the teacher is a constant.

    Args:
        student_hidden: `[B, T, H]` (with `mask [B, T]`) or `[N, H]`; the student's final hidden
            states, aligned so that position t predicts response token t (the caller shifts).
            May be bf16/fp16: every chunk is computed in fp32 (fp64 stays fp64).
        lm_head_weight: `[V, H]` (`model.lm_head.weight`); `lm_head_bias` optional `[V]`. A bf16/fp16
            head (the student's or the teacher's) stays as it is: only the slice of it in use is
            upcast (`UPCAST_ELEMENTS`), never the whole head.
        mask: `[B, T]` response positions (1 = counts). None = every position.
        teacher_logits: `[B, T, V]` (or `[N, V]`), same layout as `student_hidden`; read one chunk
            of rows at a time. Or instead `teacher_hidden` `[B, T, H_T]` + `teacher_head_weight`
            `[V, H_T]` (+ `teacher_head_bias`), for which teacher logits are also made per chunk.
        divergence: `forward_kl`, `reverse_kl` or `jsd` (with `beta`; 0 = forward, 1 = reverse KL).
        temperature, vocab_clip, token_clip, top_k, tail_bucket: as in `token_divergence`.
        token_weights: `[B, T]` (or broadcastable, e.g. `[B, 1]`) per-token weights `w_t` (TOPD
            filter, ReNIO weight spread over its tokens, ...). None = 1. No gradient flows into them.
        normalizer: the denominator. Pass the token count of the whole optimisation batch (all
            micro-batches, all processes) so that accumulated gradients equal the full-batch
            gradient. None = this call's masked token count (a micro-batch token mean).
        chunk_size: positions per chunk (default 512); results do not depend on it.
        observe: called once per chunk as `observe(start, student_logits, teacher_logits)` (fp32
            `[n, V]` at temperature 1, the selected rows `start .. start + n`, before the divergence
            uses them; read only), so per-token statistics ride on the loss's own vocabulary pass.

    Returns:
        `(loss, per_token)`: the scalar loss (differentiable; fp32, or fp64 for fp64 inputs), and the
        detached unweighted `D_t` with the shape of `mask` (0 off-mask), or `[N]` without a mask,
        for logging. Gradients come back in the dtype of each input.

    Recipes (N_batch, B_batch = counts over the whole optimisation batch, all processes):
        token mean:         `normalizer=N_batch`
        TOPD filter:        `token_weights=near_future_filter(D, mask)`, `normalizer=N_batch`
        ReNIO `(1/B) sum_i w_i mean_t D_t(i)`: `token_weights = w[:, None] / mask.sum(-1, keepdim=True)`,
                            `normalizer=B_batch` (the sequence mean, expressed per token)
        DDP averages gradients over W processes: multiply the loss by W (or divide the normaliser).

    Forward, reverse KL and JSD without per-vocab clip or top-k use closed-form logit gradients;
    other options run a local autograd pass inside each chunk. Memory: a few `chunk x V` fp32
    buffers, an fp32 slice of a lower-precision head, plus one fp32 `[V, H]` gradient accumulator
    when the head itself is trained.
    """
    hidden_dim = student_hidden.shape[-1]
    flat_hidden = student_hidden.reshape(-1, hidden_dim)
    if mask is None:
        rows = torch.arange(flat_hidden.shape[0], device=flat_hidden.device)
        out_shape = student_hidden.shape[:-1]
    else:
        rows = mask.reshape(-1).bool().nonzero().squeeze(-1)
        out_shape = mask.shape
    if token_weights is None:
        weights = torch.ones(rows.shape[0], device=rows.device)
    else:
        weights = torch.broadcast_to(token_weights.detach(), out_shape).reshape(-1)[rows]
    if normalizer is None:
        normalizer = max(rows.shape[0], 1)
    name, beta = canonical_divergence(divergence, beta)
    options = dict(divergence=name, beta=beta, temperature=temperature, vocab_clip=vocab_clip,
                   token_clip=token_clip, top_k=top_k, tail_bucket=tail_bucket)
    teacher_chunk = _teacher_chunker(rows, teacher_logits, teacher_hidden, teacher_head_weight, teacher_head_bias)
    teacher_vocab = (teacher_logits if teacher_logits is not None else teacher_head_weight.T).shape[-1]
    if teacher_vocab != lm_head_weight.shape[0]:
        raise ValueError(f"teacher vocab {teacher_vocab} != student vocab {lm_head_weight.shape[0]}")
    loss, values = _FusedDivergence.apply(
        flat_hidden[rows], lm_head_weight, lm_head_bias, weights, teacher_chunk, options,
        float(normalizer), int(chunk_size), observe,
    )
    per_token = values.new_zeros(out_shape.numel())
    per_token[rows] = values
    return loss, per_token.reshape(out_shape)
