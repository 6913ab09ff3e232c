"""The sampled-token objective from hidden states equals the dense full-logits estimator."""

from __future__ import annotations

import pytest
import torch

from oracles import sampled_token_objective_dense

from trajdistill.losses import sampled_token_objective

N, H, H_T, V = 10, 5, 7, 13


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(N, H, generator=gen, dtype=torch.float64).requires_grad_(True)
    student_head = torch.randn(V, H, generator=gen, dtype=torch.float64).requires_grad_(True)
    teacher_hidden = torch.randn(N, H_T, generator=gen, dtype=torch.float64)
    teacher_head = torch.randn(V, H_T, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=gen)
    token_weights = torch.rand(N, generator=gen, dtype=torch.float64)
    return student_hidden, student_head, teacher_hidden, teacher_head, targets, token_weights


@pytest.mark.parametrize("chunk_size", [1, 3, 512])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_sampled_token_objective_matches_the_dense_oracle(chunk_size, temperature):
    inputs = _problem()
    student_hidden, student_head = inputs[:2]
    loss, per_token = sampled_token_objective(*inputs, 17.0, temperature=temperature, chunk_size=chunk_size)
    expected, expected_per_token = sampled_token_objective_dense(*inputs, 17.0, temperature=temperature)
    # token_logprobs computes each chunk in fp32, so the agreement is to fp32 precision
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_token.double(), expected_per_token, rtol=1e-5, atol=1e-6)
    assert not per_token.requires_grad
    grads = torch.autograd.grad(loss, (student_hidden, student_head))
    expected_grads = torch.autograd.grad(expected, (student_hidden, student_head))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_teacher_and_the_weights_get_no_gradient():
    student_hidden, student_head, teacher_hidden, teacher_head, targets, token_weights = _problem(1)
    teacher_hidden.requires_grad_(True)
    teacher_head.requires_grad_(True)
    token_weights.requires_grad_(True)
    loss, _ = sampled_token_objective(student_hidden, student_head, teacher_hidden, teacher_head, targets,
                                      token_weights, float(N), temperature=1.0, chunk_size=4)
    loss.backward()
    assert teacher_hidden.grad is None and teacher_head.grad is None and token_weights.grad is None
    assert student_hidden.grad is not None and student_head.grad is not None
