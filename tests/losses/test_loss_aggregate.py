"""Aggregation: token mean over the whole batch, sequence mean, sample and token weights."""

from __future__ import annotations

import pytest
import torch

from oracles import aggregate, global_sum

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def test_token_mean_counts_only_response_tokens():
    assert aggregate(PER_TOKEN, MASK).item() == pytest.approx((1 + 2 + 3 + 4) / 4)


def test_sequence_mean_then_batch_mean():
    assert aggregate(PER_TOKEN, MASK, mode="sequence").item() == pytest.approx((2.0 + 4.0) / 2)


def test_sample_weights_scale_each_sequence():
    weights = torch.tensor([0.5, 3.0])
    assert aggregate(PER_TOKEN, MASK, mode="sequence", sample_weights=weights).item() == pytest.approx(
        (0.5 * 2.0 + 3.0 * 4.0) / 2)
    assert aggregate(PER_TOKEN, MASK, sample_weights=weights).item() == pytest.approx((0.5 * 6 + 3.0 * 4) / 4)


def test_token_weights_drop_summands_but_keep_the_count():
    token_weights = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert aggregate(PER_TOKEN, MASK, token_weights=token_weights).item() == pytest.approx((1 + 3 + 4) / 4)
    assert aggregate(PER_TOKEN, MASK, mode="sequence", token_weights=token_weights).item() == pytest.approx(
        ((1 + 3) / 3 + 4.0) / 2)


@pytest.mark.parametrize("mode", ["token", "sequence"])
def test_micro_batches_sum_to_the_full_batch_loss(mode):
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(8, 5, generator=gen)
    mask = (torch.rand(8, 5, generator=gen) > 0.3).long()
    weights = torch.rand(8, generator=gen)
    full = aggregate(values, mask, mode=mode, sample_weights=weights)
    totals = {"num_tokens": global_sum(mask.sum()), "num_sequences": 8}
    parts = sum(aggregate(values[i:i + 2], mask[i:i + 2], mode=mode, sample_weights=weights[i:i + 2], **totals)
                for i in range(0, 8, 2))
    torch.testing.assert_close(parts, full)
    # the naive per-micro-batch mean is a different (biased) number on ragged masks
    naive = sum(aggregate(values[i:i + 2], mask[i:i + 2], mode=mode, sample_weights=weights[i:i + 2])
                for i in range(0, 8, 2)) / 4
    assert mode == "sequence" or not torch.allclose(naive, full)


def test_weights_get_no_gradient_and_empty_mask_is_zero():
    values = PER_TOKEN.clone().requires_grad_(True)
    weights = torch.tensor([1.0, 2.0], requires_grad=True)
    aggregate(values, MASK, sample_weights=weights).backward()
    assert weights.grad is None
    torch.testing.assert_close(values.grad, torch.tensor([[1.0, 1, 1, 0], [2.0, 0, 0, 0]]) / 4)
    assert aggregate(PER_TOKEN, torch.zeros_like(MASK)).item() == 0.0


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        aggregate(PER_TOKEN, MASK, mode="batch")
