"""The token log-prob primitive equals a gathered full-vocabulary log-softmax, in value and gradient."""

from __future__ import annotations

import pytest
import torch

from trajdistill.losses import per_sequence_sum, token_logprobs

N, H, V = 11, 5, 13


def _problem(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen, dtype=dtype).requires_grad_(True)
    weight = torch.randn(V, H, generator=gen, dtype=dtype).requires_grad_(True)
    targets = torch.randint(0, V, (N,), generator=gen)
    return hidden, weight, targets


def _full_softmax(hidden, weight, targets, temperature):
    logp = torch.log_softmax(hidden.double() @ weight.double().T / temperature, dim=-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [1, 4, 512])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_the_gathered_log_softmax(chunk_size, temperature):
    hidden, weight, targets = _problem()
    got = token_logprobs(hidden, weight, targets, temperature=temperature, chunk_size=chunk_size)
    expected = _full_softmax(hidden, weight, targets, temperature)
    torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    upstream = torch.linspace(-1.0, 1.0, N, dtype=torch.float64)
    grads = torch.autograd.grad((got.double() * upstream).sum(), (hidden, weight))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (hidden, weight))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_token_logprobs_without_grad_and_without_rows():
    hidden, weight, targets = _problem()
    with torch.no_grad():
        values = token_logprobs(hidden, weight, targets, chunk_size=3)
    assert values.shape == (N,) and not values.requires_grad
    assert token_logprobs(hidden[:0], weight, targets[:0]).shape == (0,)


def test_per_sequence_sum_adds_each_sequences_tokens():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = per_sequence_sum(values, torch.tensor([0, 0, 2, 2]), 3)
    torch.testing.assert_close(got, torch.tensor([3.0, 0.0, 7.0]))
