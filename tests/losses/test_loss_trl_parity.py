"""Our generalized JSD equals TRL's `GKDTrainer.generalized_jsd_loss` with the same beta.

TRL 1.16 keeps GKD in `trl.experimental.gkd`; its beta = 0 branch is forward KL `KL(p_T || p_S)`,
beta = 1 reverse KL, and the mixture is `beta p_T + (1 - beta) p_S`: the docs/methods.md convention.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
gkd_trainer = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
trl_jsd = gkd_trainer.GKDTrainer.generalized_jsd_loss

from oracles import aggregate, forward_kl, generalized_jsd, reverse_kl  # noqa: E402

from trajdistill.losses import chunked_divergence_from_hidden  # noqa: E402


def _inputs():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 17, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(3, 5, 17, generator=gen, dtype=torch.float64) * 2
    mask = torch.ones(3, 5)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    labels = torch.where(mask.bool(), 1, -100)
    return student, teacher, mask, labels


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_token_mean_and_gradient_match_trl(beta, temperature):
    student, teacher, mask, labels = _inputs()
    ours_in = student.clone().requires_grad_(True)
    trl_in = student.clone().requires_grad_(True)
    ours = aggregate(generalized_jsd(ours_in, teacher, mask, beta=beta, temperature=temperature), mask)
    theirs = trl_jsd(trl_in, teacher, labels=labels, beta=beta, temperature=temperature, reduction="batchmean")
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_in.grad, trl_in.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_per_token_values_match_trl(beta):
    student, teacher, mask, _ = _inputs()
    theirs = trl_jsd(student, teacher, beta=beta, reduction="none").sum(-1)
    torch.testing.assert_close(generalized_jsd(student, teacher, beta=beta), theirs, rtol=1e-10, atol=1e-12)


def test_beta_ends_are_forward_and_reverse_kl():
    student, teacher, mask, _ = _inputs()
    fkl = trl_jsd(student, teacher, beta=0.0, reduction="none").sum(-1)
    rkl = trl_jsd(student, teacher, beta=1.0, reduction="none").sum(-1)
    torch.testing.assert_close(forward_kl(student, teacher), fkl)
    torch.testing.assert_close(reverse_kl(student, teacher), rkl)
    assert not torch.allclose(fkl, rkl)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_chunked_path_matches_trl_with_global_token_count(beta):
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(17, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    _, teacher, mask, labels = _inputs()
    ours, _ = chunked_divergence_from_hidden(hidden, weight, mask, teacher_logits=teacher, divergence="jsd",
                                             beta=beta, normalizer=20.0, chunk_size=3)
    theirs = trl_jsd(hidden @ weight.T, teacher, labels=labels, beta=beta, num_items_in_batch=20.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    ours_grads = torch.autograd.grad(ours, (hidden, weight))
    theirs_grads = torch.autograd.grad(theirs, (hidden, weight))
    for got, expected in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
