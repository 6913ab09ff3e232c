"""The fused chunked path equals the dense path, whatever the chunk size, micro-batching or dtype."""

from __future__ import annotations

import pytest
import torch

from oracles import aggregate, per_token_divergence

from trajdistill.losses import chunked_divergence_from_hidden

B, T, H, V = 8, 6, 5, 13


def _problem(seed=0, dtype=torch.float64, bias=False):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen, dtype=dtype).requires_grad_(True)
    weight = torch.randn(V, H, generator=gen, dtype=dtype).requires_grad_(True)
    head_bias = (torch.randn(V, generator=gen, dtype=dtype) * 0.3).requires_grad_(True) if bias else None
    teacher_hidden = torch.randn(B, T, H, generator=gen, dtype=dtype)
    teacher_weight = torch.randn(V, H, generator=gen, dtype=dtype)
    mask = torch.ones(B, T)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask[torch.arange(T)[None, :] >= lengths[:, None]] = 0
    token_weights = torch.rand(B, T, generator=gen, dtype=dtype)
    return hidden, weight, head_bias, teacher_hidden @ teacher_weight.T, mask, token_weights


OPTIONS = [
    {"divergence": "forward_kl"},
    {"divergence": "reverse_kl", "temperature": 0.7},
    {"divergence": "jsd", "beta": 0.5},
    {"divergence": "jsd", "beta": 0.2, "token_clip": 1.0, "temperature": 1.3},
    {"divergence": "forward_kl", "vocab_clip": 0.05},
    {"divergence": "reverse_kl", "top_k": 4, "token_clip": 0.3},
    {"divergence": "jsd", "beta": 0.7, "top_k": 3, "tail_bucket": True, "vocab_clip": 0.1},
]


def _dense_loss(hidden, weight, head_bias, teacher_logits, mask, token_weights, normalizer, options):
    options = dict(options)
    logits = hidden @ weight.T + (0 if head_bias is None else head_bias)
    per_token = per_token_divergence(options.pop("divergence"), logits, teacher_logits, mask, **options)
    return aggregate(per_token, mask, num_tokens=normalizer, token_weights=token_weights), per_token


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_chunked_matches_dense_loss_and_gradients(options):
    hidden, weight, head_bias, teacher_logits, mask, token_weights = _problem(bias=True)
    dense, dense_values = _dense_loss(hidden, weight, head_bias, teacher_logits, mask, token_weights, 37.0, options)
    dense_grads = torch.autograd.grad(dense, (hidden, weight, head_bias))
    loss, values = chunked_divergence_from_hidden(
        hidden, weight, mask, teacher_logits=teacher_logits, lm_head_bias=head_bias,
        token_weights=token_weights, normalizer=37.0, chunk_size=5, **options,
    )
    grads = torch.autograd.grad(loss, (hidden, weight, head_bias))
    torch.testing.assert_close(loss, dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(values, dense_values.detach(), rtol=1e-10, atol=1e-12)
    assert not values.requires_grad
    for got, expected in zip(grads, dense_grads):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[2], OPTIONS[6]], ids=["fkl", "jsd", "jsd-topk-tail-clip"])
def test_chunked_gradcheck(options):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    head_bias = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])

    def fn(h, w, b):
        return chunked_divergence_from_hidden(h, w, mask, teacher_logits=teacher_logits, lm_head_bias=b,
                                              chunk_size=2, **options)[0]

    assert torch.autograd.gradcheck(fn, (hidden, weight, head_bias))


@pytest.mark.parametrize("options", [OPTIONS[1], OPTIONS[3], OPTIONS[5]], ids=["rkl", "jsd-clip", "rkl-topk"])
def test_chunk_size_does_not_change_loss_or_gradients(options):
    hidden, weight, _, teacher_logits, mask, token_weights = _problem(1)
    results = []
    for chunk_size in (1, 7, 512, int(mask.sum())):
        loss, values = chunked_divergence_from_hidden(hidden, weight, mask, teacher_logits=teacher_logits,
                                                      token_weights=token_weights, chunk_size=chunk_size, **options)
        results.append((loss, values, *torch.autograd.grad(loss, (hidden, weight))))
    for other in results[1:]:
        for got, expected in zip(other, results[0]):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "dense"])
def test_micro_batches_with_global_token_count_give_the_full_batch_gradient(chunked):
    hidden, weight, _, teacher_logits, mask, _ = _problem(2)
    options = {"divergence": "jsd", "beta": 0.3}

    def loss_of(rows, normalizer):
        if chunked:
            return chunked_divergence_from_hidden(hidden[rows], weight, mask[rows], teacher_logits=teacher_logits[rows],
                                                  normalizer=normalizer, **options)[0]
        return _dense_loss(hidden[rows], weight, None, teacher_logits[rows], mask[rows], None, normalizer, options)[0]

    full = torch.autograd.grad(loss_of(slice(0, 8), None), (hidden, weight))
    total_tokens = mask.sum()
    accumulated = [torch.zeros_like(hidden), torch.zeros_like(weight)]
    for start in range(0, 8, 2):
        micro = torch.autograd.grad(loss_of(slice(start, start + 2), total_tokens), (hidden, weight))
        accumulated = [a + g for a, g in zip(accumulated, micro)]
    for got, expected in zip(accumulated, full):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_teacher_from_hidden_states_equals_teacher_logits():
    hidden, weight, _, _, mask, _ = _problem(4)
    gen = torch.Generator().manual_seed(9)
    teacher_hidden = torch.randn(B, T, 7, generator=gen, dtype=torch.float64)
    teacher_weight = torch.randn(V, 7, generator=gen, dtype=torch.float64)
    teacher_bias = torch.randn(V, generator=gen, dtype=torch.float64)
    from_logits = chunked_divergence_from_hidden(
        hidden, weight, mask, teacher_logits=teacher_hidden @ teacher_weight.T + teacher_bias, chunk_size=4,
        divergence="reverse_kl")
    from_hidden = chunked_divergence_from_hidden(
        hidden, weight, mask, teacher_hidden=teacher_hidden, teacher_head_weight=teacher_weight,
        teacher_head_bias=teacher_bias, chunk_size=4, divergence="reverse_kl")
    # the teacher head runs in fp32 inside the chunk, so agreement is to fp32 precision
    torch.testing.assert_close(from_hidden[0], from_logits[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(from_hidden[1], from_logits[1], rtol=1e-5, atol=1e-6)


def test_flat_inputs_without_mask():
    hidden, weight, _, teacher_logits, mask, _ = _problem(5)
    rows = mask.bool()
    flat = chunked_divergence_from_hidden(hidden[rows], weight, teacher_logits=teacher_logits[rows], chunk_size=3)
    batched = chunked_divergence_from_hidden(hidden, weight, mask, teacher_logits=teacher_logits, chunk_size=3)
    torch.testing.assert_close(flat[0], batched[0])
    torch.testing.assert_close(flat[1], batched[1][rows])


def test_bf16_inputs_are_computed_in_fp32():
    hidden, weight, _, teacher_logits, mask, _ = _problem(6, dtype=torch.float32)
    hidden16 = hidden.detach().bfloat16().requires_grad_(True)
    weight16 = weight.detach().bfloat16().requires_grad_(True)
    teacher16 = teacher_logits.bfloat16()
    loss16, _ = chunked_divergence_from_hidden(hidden16, weight16, mask, teacher_logits=teacher16,
                                               divergence="jsd", chunk_size=4)
    loss16.backward()
    # reference: the same bf16 values, upcast to fp64 before any arithmetic
    hidden64 = hidden16.detach().double().requires_grad_(True)
    weight64 = weight16.detach().double().requires_grad_(True)
    loss64, _ = chunked_divergence_from_hidden(hidden64, weight64, mask, teacher_logits=teacher16.double(),
                                               divergence="jsd", chunk_size=4)
    loss64.backward()
    assert loss16.dtype == torch.float32
    assert hidden16.grad.dtype == weight16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss16.double(), loss64, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(hidden16.grad.double(), hidden64.grad, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(weight16.grad.double(), weight64.grad, rtol=2e-2, atol=1e-3)


def test_frozen_head_gets_no_gradient_and_empty_mask_gives_zero():
    hidden, weight, _, teacher_logits, mask, _ = _problem(7)
    frozen = weight.detach()
    loss, _ = chunked_divergence_from_hidden(hidden, frozen, mask, teacher_logits=teacher_logits)
    loss.backward()
    assert frozen.grad is None and hidden.grad is not None
    empty, values = chunked_divergence_from_hidden(hidden, weight, torch.zeros(B, T), teacher_logits=teacher_logits)
    assert empty.item() == 0.0 and (values == 0).all()


def test_renio_sequence_mean_expressed_as_token_weights():
    hidden, weight, _, teacher_logits, mask, _ = _problem(8)
    sample_weights = torch.linspace(0.5, 2.0, B, dtype=torch.float64)
    options = {"divergence": "forward_kl", "vocab_clip": 0.05}
    logits = hidden @ weight.T
    per_token = per_token_divergence("forward_kl", logits, teacher_logits, mask, vocab_clip=0.05)
    expected = aggregate(per_token, mask, mode="sequence", sample_weights=sample_weights)
    token_weights = sample_weights[:, None] / mask.sum(-1, keepdim=True)
    loss, _ = chunked_divergence_from_hidden(hidden, weight, mask, teacher_logits=teacher_logits,
                                             token_weights=token_weights, normalizer=B, chunk_size=9, **options)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, (hidden, weight)), torch.autograd.grad(expected, (hidden, weight))):
        torch.testing.assert_close(got, want)


class _LargestFloat32(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the element count of the largest fp32 tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("train_head", [False, True], ids=["frozen-head", "trained-head"])
def test_a_bf16_head_is_upcast_one_vocabulary_slice_at_a_time(monkeypatch, train_head):
    """Neither the student's nor the teacher's bf16 head is copied to fp32 whole (only the fp32
    gradient of a trained head has its size); the loss and gradients stay those of fp32 arithmetic
    on the bf16 values (an fp64 reference on the same values)."""
    import trajdistill.losses.chunked as chunked

    vocab, width, rows = 1024, 64, 24
    monkeypatch.setattr(chunked, "UPCAST_ELEMENTS", 64 * 100)  # slices of 100 rows: 11 slices, the last short
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, width, generator=gen).bfloat16().requires_grad_(True)
    weight = (torch.randn(vocab, width, generator=gen) * 0.3).bfloat16().requires_grad_(train_head)
    teacher_hidden = torch.randn(rows, width, generator=gen).bfloat16()
    teacher_weight = (torch.randn(vocab, width, generator=gen) * 0.3).bfloat16()
    options = dict(divergence="jsd", beta=0.3, temperature=0.9, chunk_size=8)
    with _LargestFloat32() as seen:
        loss, _ = chunked_divergence_from_hidden(hidden, weight, teacher_hidden=teacher_hidden,
                                                 teacher_head_weight=teacher_weight, **options)
        grads = torch.autograd.grad(loss, (hidden, weight) if train_head else (hidden,))
    # chunk x V logits (8 x 1024) are the largest fp32 tensors; a trained head's gradient is V x H
    assert seen.largest == (vocab * width if train_head else 8 * vocab)

    wide = [t.detach().double().requires_grad_(True) for t in (hidden, weight)]
    ref, _ = chunked_divergence_from_hidden(wide[0], wide[1], teacher_hidden=teacher_hidden.double(),
                                            teacher_head_weight=teacher_weight.double(), **options)
    ref_grads = torch.autograd.grad(ref, wide if train_head else wide[:1])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-4)  # bf16 rounding of the result


def test_token_logprobs_upcast_a_bf16_head_one_vocabulary_slice_at_a_time(monkeypatch):
    """The sampled-token loss, rescoring and ReNIO's ratios read log-probs through `token_logprobs`:
    a bf16 head is not copied to fp32 whole there either, and the values are fp32 arithmetic on the
    bf16 values (an fp64 reference)."""
    import trajdistill.losses.chunked as chunked
    from trajdistill.losses import token_logprobs

    vocab, width, rows = 1024, 64, 24
    monkeypatch.setattr(chunked, "UPCAST_ELEMENTS", 64 * 100)
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(rows, width, generator=gen).bfloat16()
    weight = (torch.randn(vocab, width, generator=gen) * 0.3).bfloat16()
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    with _LargestFloat32() as seen:
        got = token_logprobs(hidden, weight, targets, temperature=0.7, chunk_size=8)
    assert seen.largest == 8 * vocab  # chunk x V logits, never the V x H head
    with torch.no_grad():  # fp64 on the same bf16 values
        logits = hidden.double() @ weight.double().T / 0.7
        want = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
