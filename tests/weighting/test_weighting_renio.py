"""ReNIO scores and sample weights on hand-built log-probs, and cross-process normalisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trajdistill.weighting import global_mean, renio_raw_weights, renio_sample_weights, renio_scores


def _logps(ratios):
    """Student/teacher log-probs whose difference `log p_S - log p_T` is `ratios`."""
    teacher = torch.full_like(ratios, -3.0)
    return teacher + ratios, teacher


RATIOS = torch.tensor([
    [0.5, 1.5, 3.0, 9.0],   # capped at C = 2: pivotal {1.5, 2.0}; the 9.0 is padding
    [0.2, -1.0, 0.9, 0.0],  # nothing reaches delta = 1
    [1.0, 1.0, 0.0, 0.0],   # delta is inclusive: pivotal {1.0, 1.0}
])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])


def test_scores_are_the_mean_capped_ratio_over_pivotal_tokens():
    scores, pivotal = renio_scores(*_logps(RATIOS), MASK, ratio_cap=2.0, threshold=1.0)
    torch.testing.assert_close(scores, torch.tensor([1.75, 0.0, 1.0]))
    assert pivotal.tolist() == [True, False, True]


def test_no_pivotal_token_gives_raw_weight_one():
    scores, _ = renio_scores(*_logps(RATIOS[1:2]), MASK[1:2], ratio_cap=2.0, threshold=1.0)
    assert renio_raw_weights(scores).item() == 1.0


def test_weights_are_normalised_by_the_batch_mean():
    weights = renio_sample_weights(*_logps(RATIOS), MASK, ratio_cap=2.0, threshold=1.0, tau=2.0)
    raw = torch.tensor([math.exp(1.75 / 2), 1.0, math.exp(0.5)])
    torch.testing.assert_close(weights, raw / raw.mean())
    assert weights.mean().item() == pytest.approx(1.0)


def test_cap_applies_after_normalising():
    ratios = torch.zeros(12, 3)
    ratios[0] = 2.0  # s = 2, w = exp(20) with tau = 0.1, so w / mean ~ 12
    weights = renio_sample_weights(*_logps(ratios), torch.ones(12, 3), ratio_cap=2.0, threshold=1.0, tau=0.1)
    assert weights[0].item() == 10.0
    expected_rest = 1.0 / ((math.exp(20.0) + 11) / 12)
    torch.testing.assert_close(weights[1:], torch.full((11,), expected_rest))


def test_micro_normalisation_makes_a_single_rollout_weight_one():
    weights = renio_sample_weights(*_logps(RATIOS[:1]), MASK[:1], ratio_cap=2.0, threshold=1.0, normalize="micro")
    assert weights.item() == 1.0


def test_precomputed_batch_mean_is_used_and_no_gradient_flows():
    student, teacher = _logps(RATIOS)
    student.requires_grad_(True)
    weights = renio_sample_weights(student, teacher, MASK, ratio_cap=2.0, threshold=1.0, batch_mean=2.0)
    assert not weights.requires_grad
    torch.testing.assert_close(weights, torch.tensor([math.exp(1.75), 1.0, math.exp(1.0)]) / 2.0)


def _two_process_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = slice(0, 1) if rank == 0 else slice(1, 3)  # unequal micro-batches
        weights = renio_sample_weights(*_logps(RATIOS[rows]), MASK[rows], ratio_cap=2.0, threshold=1.0)
        torch.save(weights, f"{out_dir}/weights{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_normalise_over_the_whole_batch(tmp_path):
    mp.spawn(_two_process_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    gathered = torch.cat([torch.load(tmp_path / f"weights{rank}.pt") for rank in (0, 1)])
    single = renio_sample_weights(*_logps(RATIOS), MASK, ratio_cap=2.0, threshold=1.0)
    torch.testing.assert_close(gathered, single)


def test_global_mean_without_distributed_is_the_local_mean():
    values = torch.tensor([1.0, 2.0, 6.0])
    assert global_mean(values).item() == pytest.approx(3.0)
