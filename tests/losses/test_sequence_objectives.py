"""SFT / REDI / DPO / SimPO objectives: brute-force references, limits, TRL parity, accumulation."""

import math
from types import SimpleNamespace

import pytest
import torch

from trajdistill.losses.sequence import dpo_loss, redi_loss, sft_loss, simpo_loss


def batch(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    c_len = torch.randint(1, 30, (n,), generator=g)
    r_len = torch.randint(1, 30, (n,), generator=g)
    c = -torch.rand(n, generator=g, dtype=torch.float64) * c_len
    r = -torch.rand(n, generator=g, dtype=torch.float64) * r_len * 2
    return c, c_len, r, r_len


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_sft_is_the_mean_per_token_negative_log_likelihood():
    c, c_len, _, _ = batch()
    loss, metrics = sft_loss(c, c_len)
    expected = sum(-c[i].item() / c_len[i].item() for i in range(len(c))) / len(c)
    assert loss.item() == pytest.approx(expected)
    assert metrics["logp/sequence"] == (pytest.approx(-expected * len(c)), len(c))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_redi_matches_a_brute_force_loop(alpha):
    c, c_len, r, r_len = batch(1)
    loss, _ = redi_loss(c, c_len, r, r_len, alpha=alpha)
    expected = sum(-c[i].item() / c_len[i].item() + alpha * r[i].item() / r_len[i].item()
                   for i in range(len(c))) / len(c)
    assert loss.item() == pytest.approx(expected)


def test_redi_at_alpha_zero_is_sft_on_the_chosen_responses():
    c, c_len, r, r_len = batch(2)
    c.requires_grad_(True)
    redi, _ = redi_loss(c, c_len, r, r_len, alpha=0.0)
    (g_redi,) = torch.autograd.grad(redi, c)
    sft, _ = sft_loss(c, c_len)
    (g_sft,) = torch.autograd.grad(sft, c)
    assert redi.item() == pytest.approx(sft.item())
    assert torch.allclose(g_redi, g_sft)


def test_redi_gradient_is_asymmetric_reinforce():
    c, c_len, r, r_len = batch(3)
    c.requires_grad_(True)
    r.requires_grad_(True)
    loss, _ = redi_loss(c, c_len, r, r_len, alpha=0.8)
    gc, gr = torch.autograd.grad(loss, (c, r))
    n = len(c)
    assert torch.allclose(gc, -1.0 / (n * c_len.double()))
    assert torch.allclose(gr, 0.8 / (n * r_len.double()))


def test_redi_logs_per_token_logprobs_and_margin():
    c, c_len, r, r_len = batch(4)
    _, m = redi_loss(c, c_len, r, r_len)
    chosen = (c / c_len).sum().item()
    rejected = (r / r_len).sum().item()
    assert m["logp/chosen"] == (pytest.approx(chosen), 5.0)
    assert m["logp/rejected"] == (pytest.approx(rejected), 5.0)
    assert m["logp/margin"][0] == pytest.approx(chosen - rejected)


@pytest.mark.parametrize("beta", [0.001, 0.1, 1.0])
def test_dpo_matches_a_brute_force_loop(beta):
    c, _, r, _ = batch(5)
    ref_c, _, ref_r, _ = batch(6)
    loss, m = dpo_loss(c, r, ref_c, ref_r, beta=beta)
    expected = -sum(log_sigmoid(beta * ((c[i] - ref_c[i]) - (r[i] - ref_r[i])).item()) for i in range(5)) / 5
    assert loss.item() == pytest.approx(expected)
    assert m["rewards/chosen"][0] == pytest.approx(beta * (c - ref_c).sum().item())


def test_dpo_with_the_policy_as_reference_is_log_two():
    c, _, r, _ = batch(7)
    loss, m = dpo_loss(c, r, c.clone(), r.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert m["rewards/margin"][0] == pytest.approx(0.0)


@pytest.mark.parametrize("beta,gamma", [(2.0, 1.0), (2.5, 0.5), (1.0, 0.0)])
def test_simpo_matches_a_brute_force_loop(beta, gamma):
    c, c_len, r, r_len = batch(8)
    loss, _ = simpo_loss(c, c_len, r, r_len, beta=beta, gamma=gamma)
    expected = -sum(log_sigmoid(beta * (c[i].item() / c_len[i].item() - r[i].item() / r_len[i].item()) - gamma)
                    for i in range(5)) / 5
    assert loss.item() == pytest.approx(expected)


def test_simpo_matches_trl_cpo_trainer_simpo_loss():
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    c, c_len, r, r_len = batch(9)
    fake = SimpleNamespace(alpha=0.0, loss_type="simpo", beta=2.0, simpo_gamma=1.0, label_smoothing=0.0,
                           accelerator=SimpleNamespace(device=torch.device("cpu")))
    # TRL's SimPO takes length-averaged log-probs (average_log_prob=True for simpo)
    losses, _, _ = cpo.CPOTrainer.cpo_loss(fake, c / c_len, r / r_len)
    ours, _ = simpo_loss(c, c_len, r, r_len, beta=2.0, gamma=1.0)
    assert ours.item() == pytest.approx(losses.mean().item())


@pytest.mark.parametrize("objective", ["sft", "redi", "dpo", "simpo"])
def test_micro_batches_with_the_global_count_add_up_to_the_batch_mean(objective):
    c, c_len, r, r_len = batch(10, n=6)
    ref_c, _, ref_r, _ = batch(11, n=6)

    def run(sl, normalizer=None):
        if objective == "sft":
            return sft_loss(c[sl], c_len[sl], normalizer=normalizer)[0]
        if objective == "redi":
            return redi_loss(c[sl], c_len[sl], r[sl], r_len[sl], normalizer=normalizer)[0]
        if objective == "dpo":
            return dpo_loss(c[sl], r[sl], ref_c[sl], ref_r[sl], normalizer=normalizer)[0]
        return simpo_loss(c[sl], c_len[sl], r[sl], r_len[sl], normalizer=normalizer)[0]

    whole = run(slice(0, 6))
    parts = run(slice(0, 2), normalizer=6) + run(slice(2, 6), normalizer=6)
    assert parts.item() == pytest.approx(whole.item())
