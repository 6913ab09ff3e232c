"""TOPD near-future filter on hand-built per-token losses."""

from __future__ import annotations

import torch

from trajdistill.weighting import filtered_fraction, near_future_filter

PAD = 9.9  # large padding values must never count as high-loss or as the future
LOSSES = torch.tensor([
    [0.1, 5.0, 0.1, 0.1, 4.0, 3.0],
    [0.1, 6.0, 3.0, 2.0, PAD, PAD],
])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
# response mean = 23.5 / 10 = 2.35; top 30% of 10 tokens = {6.0, 5.0, 4.0}


def test_high_loss_token_followed_by_calm_tokens_is_filtered():
    weights = near_future_filter(LOSSES, MASK, quantile=0.3, window=2, rho=1.0)
    # 5.0: future (0.1, 0.1) -> 0.1 < 2.35, filtered. 4.0: future (3.0) -> kept.
    # 6.0: future (3.0, 2.0) -> 2.5 >= 2.35, kept.
    expected = torch.ones(2, 6)
    expected[0, 1] = 0
    torch.testing.assert_close(weights, expected)
    assert filtered_fraction(weights, MASK) == 0.1


def test_rho_raises_the_bar_for_the_future():
    weights = near_future_filter(LOSSES, MASK, quantile=0.3, window=2, rho=1.1)  # bar 2.585
    expected = torch.ones(2, 6)
    expected[0, 1] = expected[1, 1] = 0
    torch.testing.assert_close(weights, expected)


def test_window_length_matters():
    # bar 0.7 * 2.35 = 1.645; the 5.0 token sees (0.1, 0.1) with K = 2 but (0.1, 0.1, 4.0, 3.0) with K = 4
    short = near_future_filter(LOSSES, MASK, quantile=0.3, window=2, rho=0.7)
    long = near_future_filter(LOSSES, MASK, quantile=0.3, window=4, rho=0.7)
    assert short[0, 1] == 0 and long[0, 1] == 1


def test_padding_is_not_part_of_the_future():
    # bar 2.585; the 6.0 token's window is (3.0, 2.0) -> 2.5, filtered (with the padding it would be 6.2)
    weights = near_future_filter(LOSSES, MASK, quantile=0.3, window=4, rho=1.1)
    expected = torch.ones(2, 6)
    expected[0, 1] = expected[1, 1] = 0
    torch.testing.assert_close(weights, expected)


def test_last_response_token_has_no_future_and_is_kept():
    losses = torch.tensor([[0.1, 0.2, 8.0, PAD, PAD], [0.1, 0.1, 0.3, 0.2, 0.1]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    weights = near_future_filter(losses, mask, quantile=0.1, window=8)  # high-loss = {8.0}
    torch.testing.assert_close(weights, torch.ones(2, 5))
    assert filtered_fraction(weights, mask) == 0.0


def test_quantile_selects_the_top_fraction():
    losses = torch.tensor([[5.0, 0.0, 4.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.ones(1, 10)
    # everything after position 4 is calm, so each high-loss token with a calm window is filtered
    one = near_future_filter(losses, mask, quantile=0.1, window=1)
    three = near_future_filter(losses, mask, quantile=0.3, window=1)
    assert one[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert three[0].tolist() == [0, 1, 0, 1, 0, 1, 1, 1, 1, 1]
    assert filtered_fraction(three, mask) == 0.3


def test_filter_is_a_constant_and_handles_an_empty_mask():
    losses = LOSSES.clone().requires_grad_(True)
    assert not near_future_filter(losses, MASK).requires_grad
    torch.testing.assert_close(near_future_filter(LOSSES, torch.zeros_like(MASK)), torch.ones(2, 6))
