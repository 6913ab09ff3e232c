"""Dense per-token divergences (`token_divergence`, masked by the oracles) match a brute-force float64
reference written with explicit loops."""

from __future__ import annotations

import math

import pytest
import torch

from oracles import (
    forward_kl,
    generalized_jsd,
    per_token_divergence,
    reverse_kl,
    sampled_token_loss,
    sampled_token_loss_from_logprobs,
)


def _softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _plogq(p, log_ratio):
    return 0.0 if p == 0.0 else p * log_ratio


def brute_force(student, teacher, name, beta, tau, vocab_clip, token_clip, top_k, tail_bucket):
    """One position: Python floats and loops over the vocabulary, straight from docs/methods.md."""
    s = [x / tau for x in student]
    t = [x / tau for x in teacher]
    if top_k is None:
        p_s, p_t = _softmax(s), _softmax(t)
    else:
        ids = sorted(range(len(t)), key=lambda v: -t[v])[:top_k]
        if tail_bucket:
            full_s, full_t = _softmax(s), _softmax(t)
            p_s = [full_s[v] for v in ids]
            p_t = [full_t[v] for v in ids]
            p_s.append(1.0 - sum(p_s))
            p_t.append(1.0 - sum(p_t))
        else:
            p_s = _softmax([s[v] for v in ids])
            p_t = _softmax([t[v] for v in ids])
    if name == "jsd" and beta == 0.0:
        name = "forward_kl"
    if name == "jsd" and beta == 1.0:
        name = "reverse_kl"
    total = 0.0
    for ps, pt in zip(p_s, p_t):
        if name == "forward_kl":
            d = _plogq(pt, math.log(pt) - math.log(ps)) if pt > 0 else 0.0
        elif name == "reverse_kl":
            d = _plogq(ps, math.log(ps) - math.log(pt)) if ps > 0 else 0.0
        else:
            m = beta * pt + (1 - beta) * ps
            d = 0.0
            if pt > 0:
                d += beta * pt * (math.log(pt) - math.log(m))
            if ps > 0:
                d += (1 - beta) * ps * (math.log(ps) - math.log(m))
        if vocab_clip is not None:
            d = min(max(d, 0.0), vocab_clip)
        total += d
    if token_clip is not None:
        total = min(total, token_clip)
    return total


def _inputs(seed=0, shape=(2, 3, 7)):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=gen, dtype=torch.float64) * 1.5
    teacher = student + torch.randn(*shape, generator=gen, dtype=torch.float64)
    mask = torch.ones(shape[:-1])
    mask[-1, -1] = 0
    return student, teacher, mask


DIVERGENCES = [("forward_kl", None), ("reverse_kl", None), ("jsd", 0.0), ("jsd", 0.3), ("jsd", 0.5), ("jsd", 1.0)]
OPTIONS = [
    {},
    {"temperature": 0.7},
    {"vocab_clip": 0.05},
    {"token_clip": 0.1},
    {"top_k": 3},
    {"top_k": 3, "tail_bucket": True},
    {"top_k": 4, "vocab_clip": 0.05, "token_clip": 0.08},
    {"top_k": 2, "tail_bucket": True, "vocab_clip": 0.1, "token_clip": 0.1, "temperature": 1.5},
]


def _reference(student, teacher, mask, name, beta, options):
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                out[b, t] = brute_force(
                    student[b, t].tolist(), teacher[b, t].tolist(), name, 0.5 if beta is None else beta,
                    options.get("temperature", 1.0), options.get("vocab_clip"), options.get("token_clip"),
                    options.get("top_k"), options.get("tail_bucket", False),
                )
    return out


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("name,beta", DIVERGENCES, ids=lambda x: str(x))
def test_divergence_matches_brute_force_reference(name, beta, options):
    student, teacher, mask = _inputs()
    expected = _reference(student, teacher, mask, name, beta, options)
    extra = {} if beta is None else {"beta": beta}
    got = per_token_divergence(name, student, teacher, mask, **extra, **options)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert got[1, -1] == 0.0


def test_named_functions_agree_with_dispatcher():
    student, teacher, mask = _inputs(1)
    opts = {"temperature": 1.3, "top_k": 3}
    torch.testing.assert_close(forward_kl(student, teacher, mask, **opts),
                               per_token_divergence("forward_kl", student, teacher, mask, **opts))
    torch.testing.assert_close(reverse_kl(student, teacher, mask, **opts),
                               per_token_divergence("reverse_kl", student, teacher, mask, **opts))
    torch.testing.assert_close(generalized_jsd(student, teacher, mask, beta=0.2, **opts),
                               per_token_divergence("jsd", student, teacher, mask, beta=0.2, **opts))


def test_clips_are_active_in_the_reference_cases():
    # guards the parametrized test against vacuous clip options
    student, teacher, mask = _inputs()
    for name in ("forward_kl", "reverse_kl", "jsd"):
        plain = per_token_divergence(name, student, teacher, mask)[mask.bool()]
        assert (plain > 0.1).any() and (plain < 0.1).any()
        clipped = per_token_divergence(name, student, teacher, mask, vocab_clip=0.05)[mask.bool()]
        assert (clipped != plain).any()


def test_padding_logits_never_enter():
    student, teacher, mask = _inputs()
    student[1, -1] = float("nan")
    student.requires_grad_(True)
    values = reverse_kl(student, teacher, mask)
    assert torch.isfinite(values).all() and values[1, -1] == 0
    values.sum().backward()
    assert torch.isfinite(student.grad).all() and (student.grad[1, -1] == 0).all()


@pytest.mark.parametrize("name,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.4)])
@pytest.mark.parametrize("options", [{}, {"temperature": 0.8, "token_clip": 0.5},
                                     {"vocab_clip": 0.05}, {"top_k": 3, "tail_bucket": True}])
def test_dense_gradcheck(name, beta, options):
    student, teacher, mask = _inputs(2, shape=(1, 3, 5))
    mask[0, 1] = 0
    student.requires_grad_(True)

    def fn(z):
        return per_token_divergence(name, z, teacher, mask, beta=beta, **options)

    assert torch.autograd.gradcheck(fn, (student,))


def test_teacher_receives_no_gradient():
    student, teacher, mask = _inputs()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    generalized_jsd(student, teacher, mask).sum().backward()
    assert teacher.grad is None and student.grad is not None


def test_sampled_token_estimator_value_and_gradient():
    student, teacher, mask = _inputs(3)
    student.requires_grad_(True)
    tokens = torch.tensor([[0, 4, 6], [2, 2, 1]])
    per_token = sampled_token_loss(student, teacher, tokens, mask, temperature=1.1)
    per_token.sum().backward()
    expected = torch.zeros(2, 3, dtype=torch.float64)
    expected_grad = torch.zeros_like(student)
    for b in range(2):
        for t in range(3):
            if not mask[b, t]:
                continue
            p_s = _softmax([x / 1.1 for x in student[b, t].tolist()])
            p_t = _softmax([x / 1.1 for x in teacher[b, t].tolist()])
            y = int(tokens[b, t])
            advantage = math.log(p_t[y]) - math.log(p_s[y])
            expected[b, t] = -advantage * math.log(p_s[y])
            for v in range(7):  # d log p_S(y) / dz_v = (1[v = y] - p_S(v)) / tau
                expected_grad[b, t, v] = -advantage * ((v == y) - p_s[v]) / 1.1
    torch.testing.assert_close(per_token.detach(), expected)
    torch.testing.assert_close(student.grad, expected_grad)


def test_sampled_token_estimator_advantage_is_stopgrad():
    student_logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    teacher_logp = torch.tensor([[-0.5, -3.0]])
    loss = sampled_token_loss_from_logprobs(student_logp, teacher_logp, torch.ones(1, 2))
    loss.sum().backward()
    torch.testing.assert_close(student_logp.grad, -(teacher_logp - student_logp.detach()))
