"""A few steps of every on-policy preset's loss on a tiny model lower it on a fixed batch."""

from pathlib import Path

import pytest
import torch

from trajdistill.verify import Verifiers
from trajdistill.config import load_config
from trajdistill.records import Problem, Verdict
from trajdistill.train.optim import build_optimizer

PRESETS = sorted(p.name for p in Path("configs").glob("op*-*.yaml"))


def problems():
    return [Problem(id=f"p{i}", prompt=f"What is {i} + {i + 1}?", answer=str(2 * i + 1),
                    reference=f"{i} + {i + 1} = {2 * i + 1}. The answer is \\boxed{{{2 * i + 1}}}.")
            for i in range(4)]


def fake_verify(problem, response):
    return Verdict(passed=problem.answer in response, status="passed" if problem.answer in response else "failed")


def build_tiny(preset, tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    from trajdistill.train.run import build

    sets = ["sampling.n=2", "sampling.max_new_tokens=6", "lora.r=4", "lora.alpha=8", f"output_dir={tmp_path}",
            "optim.lr=0.005", "optim.warmup_ratio=0", "optim.schedule=constant", "loss.chunk_size=7"]
    if "opd-" in preset:
        sets.append(f"teacher.name={tiny_teacher_dir}")
    if "clip" in preset:
        # A random tiny model's divergences sit far above the real 0.1 clip, where the clipped
        # loss is flat; a clip inside their range keeps some tokens trainable.
        sets.append("loss.token_clip=2.0")
    cfg = load_config(Path("configs") / preset, sets)
    ctx, method, _ = build(cfg, tmp_path, model=tiny_lm, tokenizer=tokenizer)
    ctx.verifier = Verifiers.of(fake_verify)
    return cfg, ctx, method


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_lowers_its_loss_on_a_fixed_batch(preset, tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    cfg, ctx, method = build_tiny(preset, tmp_path, tiny_lm, tokenizer, tiny_teacher_dir)
    torch.manual_seed(0)
    units = method.collect(problems(), step=0).units
    assert units, "no training sequences collected"
    totals = method.counts(units)
    optimizer, _ = build_optimizer(ctx.model, cfg.optim, total_steps=10)
    ctx.model.train()
    kls = []
    for _ in range(6):
        loss, metrics = method.loss(units, totals)
        kl_sum, count = metrics["kl/mean"]
        kls.append(kl_sum / count)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert kls[-1] < kls[0], kls


def test_opsd_teacher_sees_the_reference_and_student_does_not(tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    _, ctx, method = build_tiny("opsd-forward-kl.yaml", tmp_path, tiny_lm, tokenizer, tiny_teacher_dir)
    p = problems()[1]
    teacher_text = tokenizer.decode(method.teacher_prompt(p))
    student_text = tokenizer.decode(method.student_prompt(p))
    assert p.reference in teacher_text and p.reference not in student_text
    assert p.prompt in teacher_text and p.prompt in student_text


def test_opsd_teacher_is_the_base_model_with_adapter_disabled(tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    import copy

    base = copy.deepcopy(tiny_lm)
    _, ctx, method = build_tiny("opsd-forward-kl.yaml", tmp_path, tiny_lm, tokenizer, tiny_teacher_dir)
    for name, param in ctx.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # make the student differ from the base
    ids = torch.tensor([[1, 2, 3, 4]])
    rows, cols = torch.tensor([0, 0]), torch.tensor([1, 3])
    got = ctx.teacher.hidden(ids, torch.ones_like(ids), rows, cols)
    with torch.no_grad():
        expected = base(input_ids=ids, output_hidden_states=True).hidden_states[-1][rows, cols]
    torch.testing.assert_close(got, expected)


def test_outcome_filter_keeps_only_incorrect_rollouts(tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    _, ctx, method = build_tiny("opsd-forward-kl.yaml", tmp_path, tiny_lm, tokenizer, tiny_teacher_dir)
    ctx.verifier = Verifiers.of(lambda problem, response: Verdict(passed=problem.id in ("p0", "p1")))
    method.opts.outcome_filter = "incorrect"
    result = method.collect(problems(), step=0)
    assert {u.problem_id for u in result.units} <= {"p2", "p3"}
    assert all(u.passed is False for u in result.units)


def test_drop_truncated_trains_only_on_rollouts_that_ended(tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    _, _, method = build_tiny("opsd-forward-kl.yaml", tmp_path, tiny_lm, tokenizer, tiny_teacher_dir)
    method.opts.drop_truncated = True
    result = method.collect(problems(), step=0)
    cut = [r for r in result.rollouts if not r.finished]
    assert cut, "a random tiny model with a 6-token budget should leave some rollouts unfinished"
    assert len(result.units) == sum(1 for r in result.rollouts if r.finished and r.response_ids)
    assert all(u.finished for u in result.units)
    assert result.metrics["rollout/kept"] == (len(result.units), len(result.rollouts))


def test_drop_truncated_keeps_off_policy_references(tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    _, _, method = build_tiny("opsd-forward-kl.yaml", tmp_path, tiny_lm, tokenizer, tiny_teacher_dir)
    method.opts.drop_truncated, method.opts.off_policy_fraction = True, 1.0
    result = method.collect(problems(), step=0)
    assert len(result.units) == len(result.rollouts) == 8  # 4 problems x n = 2, all replaced, all ended
    assert all(r.off_policy and r.finished for r in result.rollouts)


class _CountingSampler:
    """Wraps the run's sampler and records the prompts it was asked for."""

    def __init__(self, inner):
        self.inner, self.prompts = inner, []

    def sample(self, prompts, params, ids):
        self.prompts += [list(p) * params.n for p in prompts]
        return self.inner.sample(prompts, params, ids)


def test_off_policy_share_is_not_sampled_from_the_student(tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    _, ctx, method = build_tiny("opsd-forward-kl.yaml", tmp_path, tiny_lm, tokenizer, tiny_teacher_dir)
    method.opts.off_policy_fraction = 0.5
    ctx.sampler = _CountingSampler(ctx.sampler)
    rollouts = method.collect(problems(), step=3).rollouts
    off = [r for r in rollouts if r.off_policy]
    assert 0 < len(off) < len(rollouts) == 8
    assert len(ctx.sampler.prompts) == len(rollouts) - len(off)  # only the student's share was sampled
    # grouped by problem, sample indices 0..n-1 in order, as a plain on-policy step returns them
    assert [(r.problem_id, r.sample_index) for r in rollouts] == [(f"p{i}", j) for i in range(4) for j in range(2)]
    for r in off:
        reference = next(p.reference for p in problems() if p.id == r.problem_id)
        assert r.text == reference and r.prompt_ids == method.student_prompt(next(p for p in problems() if p.id == r.problem_id))


def test_teacher_source_samples_the_privileged_base_model(tmp_path, tiny_lm, tokenizer, tiny_teacher_dir):
    _, ctx, method = build_tiny("opsd-forward-kl.yaml", tmp_path, tiny_lm, tokenizer, tiny_teacher_dir)
    method.opts.off_policy_fraction, method.opts.off_policy_source = 1.0, "teacher"
    method.cfg.sampling.temperature = 0.0  # greedy, so the expected tokens can be recomputed
    with torch.no_grad():  # make the adapter matter: the student now differs from its base
        for name, param in ctx.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    ctx.sampler = _CountingSampler(ctx.sampler)
    rollouts = method.collect(problems(), step=0).rollouts
    assert ctx.sampler.prompts == []  # nothing sampled from the student
    assert len(rollouts) == 8 and all(r.off_policy and r.logprobs is None for r in rollouts)
    for r in rollouts:
        problem = next(p for p in problems() if p.id == r.problem_id)
        assert r.prompt_ids == method.student_prompt(problem)  # trained on as the student's response
        teacher_ids = torch.tensor([method.teacher_prompt(problem)])
        with ctx.model.disable_adapter():
            out = ctx.model.generate(teacher_ids, attention_mask=torch.ones_like(teacher_ids), do_sample=False,
                                     max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
        expected = out[0, teacher_ids.shape[1]:].tolist()
        assert r.response_ids == expected[: len(r.response_ids)] and len(r.response_ids) > 0
        with torch.no_grad():
            student = ctx.model.generate(torch.tensor([r.prompt_ids]), do_sample=False, max_new_tokens=6,
                                         attention_mask=torch.ones(1, len(r.prompt_ids), dtype=torch.long),
                                         pad_token_id=tokenizer.pad_token_id)
        assert student[0, len(r.prompt_ids):].tolist() != r.response_ids  # not the student's own answer


def test_off_policy_source_is_validated(tmp_path):
    from trajdistill import UserError

    with pytest.raises((UserError, ValueError), match="off_policy_source"):
        load_config(Path("configs/demo.yaml"), ["opsd.off_policy_source=dataset"])
