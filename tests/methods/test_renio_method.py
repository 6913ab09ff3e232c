"""ReNIO inside the on-policy loop: which tokens its weights multiply, batch-wide normalisation,
scoring of every rollout, and a few training steps on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trajdistill.verify import Verifiers
from trajdistill.config import load_config
from trajdistill.records import Problem, Verdict
from trajdistill.methods.renio import SCORE, STUDENT_LOGPROBS, TEACHER_LOGPROBS
from trajdistill.train.batch import TrainSequence
from trajdistill.train.optim import build_optimizer
from trajdistill.weighting import renio_sample_weights



def problems(n=4):
    return [Problem(id=f"p{i}", prompt=f"What is {i} + {i + 1}?", answer=str(2 * i + 1),
                    reference=f"{i} + {i + 1} = {2 * i + 1}. The answer is \\boxed{{{2 * i + 1}}}.")
            for i in range(n)]


def fake_verify(problem, response):
    return Verdict(passed=problem.id in ("p0", "p1"))


def build_tiny(tmp_path, tiny_lm, tokenizer, *sets, preset="renio-opsd.yaml"):
    from trajdistill.train.run import build

    base = ["sampling.n=2", "sampling.max_new_tokens=6", "lora.r=4", "lora.alpha=8", f"output_dir={tmp_path}",
            "optim.lr=0.005", "optim.warmup_ratio=0", "optim.schedule=constant", "loss.chunk_size=7"]
    cfg = load_config(Path("configs") / preset, base + list(sets))
    ctx, method, _ = build(cfg, tmp_path, model=tiny_lm, tokenizer=tokenizer)
    ctx.verifier = Verifiers.of(fake_verify)
    return cfg, ctx, method


# log p_S - log p_T of each response token; with C = 2.5, delta = 0.8 (renio-opsd):
RATIOS = [
    [0.1, 3.0, 1.0],        # pivotal {2.5 (capped), 1.0}: s = 1.75
    [0.0, -1.0, 0.5, 0.2],  # none: s = 0
    [0.9, 0.9],             # s = 0.9
    [2.0],                  # s = 2.0
]


def hand_built(method, tokenizer):
    seqs = []
    for i, ratios in enumerate(RATIOS):
        s = TrainSequence(student_prompt=method.student_prompt(problems()[i]),
                          response=[100 + 7 * i + j for j in range(len(ratios))],
                          teacher_prompt=method.teacher_prompt(problems()[i]), passed=i % 2 == 0)
        teacher = torch.full((len(ratios),), -4.0)
        STUDENT_LOGPROBS.set(s, teacher + torch.tensor(ratios))
        TEACHER_LOGPROBS.set(s, teacher)
        seqs.append(s)
    method.weigh(seqs)
    return seqs


def expected_weights(method, seqs):
    from trajdistill.methods.step_scores import padded

    r = method.opts
    student, mask = padded([STUDENT_LOGPROBS.get(s) for s in seqs])
    teacher, _ = padded([TEACHER_LOGPROBS.get(s) for s in seqs])
    return renio_sample_weights(student, teacher, mask, ratio_cap=r.ratio_cap, threshold=r.threshold,
                                tau=r.tau, weight_cap=r.weight_cap, normalize="micro")


def test_scores_and_raw_weights_follow_the_hand_built_ratios(tmp_path, tiny_lm, tokenizer):
    _, _, method = build_tiny(tmp_path, tiny_lm, tokenizer)
    seqs = hand_built(method, tokenizer)
    assert [SCORE.get(s) for s in seqs] == pytest.approx([1.75, 0.0, 0.9, 2.0])
    _, pivotal = method.weigh(seqs)
    assert pivotal.tolist() == [True, False, True, True]
    raw = torch.exp(torch.tensor([1.75, 0.0, 0.9, 2.0]))
    assert method.counts(seqs)["renio_weight_sum"] == pytest.approx(float(raw.sum()))


def test_loss_is_the_weighted_mean_of_per_sequence_mean_divergences(tmp_path, tiny_lm, tokenizer):
    """L = (1/B) sum_i w_i mean_t D_t(i): each sample weight multiplies its own sequence's tokens only."""
    _, _, method = build_tiny(tmp_path, tiny_lm, tokenizer)
    seqs = hand_built(method, tokenizer)
    w = expected_weights(method, seqs)  # the whole batch in one call: batch mean = micro mean
    assert not torch.allclose(w, torch.ones_like(w))
    d = method.step_divergences(seqs)
    expected = sum(float(wi) * float(di.mean()) for wi, di in zip(w, d)) / len(seqs)
    loss, metrics = method.loss(seqs, method.counts(seqs))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert metrics["renio/weight_mean"][0] / metrics["renio/weight_mean"][1] == pytest.approx(float(w.mean()), rel=1e-6)


def test_batch_normalisation_does_not_depend_on_the_micro_batch_split(tmp_path, tiny_lm, tokenizer):
    _, ctx, method = build_tiny(tmp_path, tiny_lm, tokenizer)
    seqs = hand_built(method, tokenizer)
    totals = method.counts(seqs)
    params = [p for p in ctx.model.parameters() if p.requires_grad]

    def loss_and_grads(parts):
        for p in params:
            p.grad = None
        total = 0.0
        for part in parts:
            loss, _ = method.loss(part, totals)
            loss.backward()
            total += float(loss)
        return total, [p.grad.clone() for p in params]

    whole, g_whole = loss_and_grads([seqs])
    split, g_split = loss_and_grads([seqs[:1], seqs[1:3], seqs[3:]])
    assert split == pytest.approx(whole, rel=1e-5)
    for a, b in zip(g_whole, g_split):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)

    method.opts.normalize = "micro"  # the authors: a micro-batch of one has weight 1
    ones = sum(float(method.loss([s], totals)[0]) for s in seqs)
    d = method.step_divergences(seqs)
    assert ones == pytest.approx(sum(float(x.mean()) for x in d) / len(seqs), rel=1e-5)
    assert ones != pytest.approx(whole, rel=1e-3)


def test_collect_scores_every_rollout_and_trains_only_the_kept(tmp_path, tiny_lm, tokenizer):
    _, _, method = build_tiny(tmp_path, tiny_lm, tokenizer, "renio.outcome_filter=incorrect")
    result = method.collect(problems(), step=0)
    assert all(r.score is not None for r in result.rollouts if r.response_ids)
    assert result.units and all(u.passed is False for u in result.units)
    u, pairs = result.metrics["renio/auc"]
    assert pairs == 4 * 4  # 4 correct x 4 incorrect rollouts, scored although only incorrect ones train
    assert 0 <= u <= pairs
    assert result.metrics["renio/weight_max"][0] >= 1.0 >= result.metrics["renio/weight_min"][0]
    # the student's log-probs are the sampler's (sampling temperature), the teacher's at the same temperature
    by_ids = {tuple(r.response_ids): r for r in result.rollouts}
    for s in result.units:
        student, teacher = STUDENT_LOGPROBS.get(s), TEACHER_LOGPROBS.get(s)
        torch.testing.assert_close(student, torch.tensor(by_ids[tuple(s.response)].logprobs))
        assert s.teacher_hidden.shape[0] == len(s.response)


@pytest.mark.parametrize("preset", ["renio-opsd.yaml", "renio-opd.yaml"])
def test_a_few_renio_steps_lower_the_weighted_loss(preset, tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    sets = [f"teacher.name={tiny_teacher_dir}"] if "opd." in preset else []
    cfg, ctx, method = build_tiny(tmp_path, tiny_lm, tokenizer, *sets, preset=preset)
    torch.manual_seed(0)
    units = method.collect(problems(), step=0).units
    totals = method.counts(units)
    optimizer, _ = build_optimizer(ctx.model, cfg.optim, total_steps=10)
    ctx.model.train()
    losses = []
    for _ in range(5):
        loss, _ = method.loss(units, totals)
        losses.append(float(loss))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0], losses


def test_rollouts_without_sampler_logprobs_get_the_students_own_at_the_sampling_temperature(
        tmp_path, tiny_lm, tokenizer):
    """The vLLM backend leaves log-probs out when top-k/top-p truncate its own (no re-scoring by
    default): ReNIO then scores the rollouts with the student's forward pass, which must give the
    sampler's full-vocabulary log-probs at the sampling temperature."""
    import copy

    _, ctx, method = build_tiny(tmp_path, tiny_lm, tokenizer, "renio.outcome_filter=incorrect")
    first = method.collect(problems(), step=0)
    stripped = [copy.deepcopy(r) for r in first.rollouts]
    for r in stripped:
        r.logprobs, r.score = None, None
    calls = []

    def sample_without_logprobs(prompts, params, problem_ids=None):
        calls.append(len(prompts))
        return copy.deepcopy(stripped)

    ctx.sampler.sample = sample_without_logprobs
    again = method.collect(problems(), step=0)
    assert calls == [len(problems())]
    assert [u.response for u in again.units] == [u.response for u in first.units]
    assert again.units and all(STUDENT_LOGPROBS.get(s) is not None for s in again.units)
    for a, b in zip(first.units, again.units):
        torch.testing.assert_close(STUDENT_LOGPROBS.get(b).float(), STUDENT_LOGPROBS.get(a).float(), atol=1e-4, rtol=0)
    assert again.metrics["renio/auc"] == first.metrics["renio/auc"]


def test_cached_teacher_states_stay_in_the_models_dtype_on_its_device(tmp_path, tiny_lm, tokenizer):
    """bf16 weights give bf16 states (the teacher hands them back as fp32): the cache keeps them in
    bf16 where they were computed, no host copy, and the scores from the cache are unchanged."""
    _, ctx, method = build_tiny(tmp_path, tiny_lm.to(torch.bfloat16), tokenizer)
    seqs = hand_built(method, tokenizer)
    for s in seqs:
        s.teacher_hidden = None
    method.cache_teacher_hidden(seqs)
    device = next(ctx.model.parameters()).device
    for s in seqs:
        assert s.teacher_hidden.dtype == torch.bfloat16 and s.teacher_hidden.device == device
    from trajdistill.train.batch import collate

    fresh = ctx.teacher.response_hidden([s.teacher_prompt for s in seqs], [s.response for s in seqs],
                                        collate(seqs, ctx.pad_id).teacher)
    assert fresh.dtype == torch.float32
    assert torch.equal(torch.cat([s.teacher_hidden for s in seqs]).float(), fresh)  # bf16 values: exact
