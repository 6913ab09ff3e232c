"""TOPD inside the on-policy loop: the near-future filter on hand-built divergences, guidance
branches built from the right prefix, the two normalisers, and a few training steps on a tiny model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from trajdistill.verify import Verifiers
from trajdistill.config import load_config
from trajdistill.methods.onpolicy import TOKEN_WEIGHTS
from trajdistill.methods.topd import GUIDANCE, branch_points
from trajdistill.records import Problem, Verdict
from trajdistill.train.batch import TrainSequence
from trajdistill.train.optim import build_optimizer



def problems(n=4):
    return [Problem(id=f"p{i}", prompt=f"What is {i} + {i + 1}?", answer=str(2 * i + 1),
                    reference=f"{i} + {i + 1} = {2 * i + 1}. The answer is \\boxed{{{2 * i + 1}}}.")
            for i in range(n)]


def build_tiny(tmp_path, tiny_lm, tokenizer, *sets, preset="topd-opsd.yaml"):
    from trajdistill.train.run import build

    base = ["sampling.n=2", "sampling.max_new_tokens=8", "lora.r=4", "lora.alpha=8", f"output_dir={tmp_path}",
            "optim.lr=0.005", "optim.warmup_ratio=0", "optim.schedule=constant", "loss.chunk_size=7",
            "topd.horizon=4", "topd.window=2"]
    cfg = load_config(Path("configs") / preset, base + list(sets))
    ctx, method, _ = build(cfg, tmp_path, model=tiny_lm, tokenizer=tokenizer)
    ctx.verifier = Verifiers.of(lambda problem, response: Verdict(passed=problem.id == "p0"))
    return cfg, ctx, method


def sequences(method, lengths):
    return [TrainSequence(student_prompt=method.student_prompt(problems()[i]),
                          response=[200 + 11 * i + j for j in range(n)],
                          teacher_prompt=method.teacher_prompt(problems()[i]), passed=False,
                          problem_id=f"p{i}")
            for i, n in enumerate(lengths)]


# Hand-built D_t: 20 tokens, q = 0.2 -> the 4 largest (9, 8, 7, 6) are high-loss; mean D = 2.0;
# window K = 2: 9 at (0, 0) is followed by 0, 0 -> filtered; 8 at (0, 3) by 4, 3 -> kept;
# 7 at (1, 1) by 0, 1 (mean 0.5 < 2) -> filtered; 6 at (1, 4) is the last token -> kept.
D = [[9.0, 0.0, 0.0, 8.0, 4.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
     [0.0, 7.0, 0.0, 1.0, 6.0],
     [0.0, 1.0]]


def test_filter_zeroes_high_loss_tokens_with_a_quiet_near_future(tmp_path, tiny_lm, tokenizer, monkeypatch):
    _, _, method = build_tiny(tmp_path, tiny_lm, tokenizer)
    seqs = sequences(method, [len(d) for d in D])
    monkeypatch.setattr(method, "step_divergences", lambda s: [torch.tensor(d) for d in D])
    points, metrics = method.weigh_tokens(seqs)
    zeros = [(i, t) for i, s in enumerate(seqs) for t, u in enumerate(TOKEN_WEIGHTS.get(s).tolist()) if u == 0]
    assert zeros == [(0, 0), (1, 1)]
    assert metrics["topd/filtered_of_high"] == (2.0, 4.0)
    assert metrics["topd/filtered_frac"] == (2.0, 20.0)
    assert points == [[3], [4], []]  # guidance only at kept high-loss positions

    method.opts.filter = False  # the "OPD" / guidance-only arm: nothing filtered
    points, _ = method.weigh_tokens(seqs)
    assert all(bool((TOKEN_WEIGHTS.get(s) == 1).all()) for s in seqs)
    assert points == [[0, 3], [1, 4], []]


def test_branch_points_take_the_largest_candidates_in_text_order():
    values = torch.tensor([[1.0, 5.0, 3.0, 4.0], [2.0, 0.0, 0.0, 0.0]])
    cand = torch.tensor([[True, True, True, True], [False, False, False, False]])
    assert branch_points(values, cand, 2) == [[1, 3], []]
    assert branch_points(values, cand, 3) == [[1, 2, 3], []]


def test_loss_weights_filtered_tokens_zero_and_normalises_over_the_step(tmp_path, tiny_lm, tokenizer):
    _, _, method = build_tiny(tmp_path, tiny_lm, tokenizer)
    seqs = sequences(method, [5, 3])
    TOKEN_WEIGHTS.set(seqs[0], torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]))
    d = method.step_divergences(seqs)
    totals = {"tokens": 20.0, "sequences": 5.0, "guidance_tokens": 0.0, "guidance_sequences": 0.0}
    loss, metrics = method.loss(seqs, totals)
    expected = (float((d[0] * TOKEN_WEIGHTS.get(seqs[0])).sum()) + float(d[1].sum())) / 20.0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert metrics["kl/mean"][1] == 8  # logged over every rollout token


def test_guidance_branches_continue_the_prefix_before_the_divergent_token(tmp_path, tiny_lm, tokenizer, monkeypatch):
    _, _, method = build_tiny(tmp_path, tiny_lm, tokenizer, "topd.guidance_weight=0.5")
    seqs = sequences(method, [6, 4])
    asked = []

    def fake_continue(contexts, step):
        asked.extend(contexts)
        return [[900 + k, 901 + k] for k in range(len(contexts))]

    monkeypatch.setattr(method, "teacher_continue", fake_continue)
    branches = method.guidance_sequences(seqs, [[2, 5], [0]], step=0)
    y0, y1 = seqs[0].response, seqs[1].response
    assert [b.student_prompt for b in branches] == [seqs[0].student_prompt + y0[:2], seqs[0].student_prompt + y0[:5],
                                                    seqs[1].student_prompt]
    assert asked == [seqs[0].teacher_prompt + y0[:2], seqs[0].teacher_prompt + y0[:5], seqs[1].teacher_prompt]
    assert [b.teacher_prompt for b in branches] == asked
    assert [b.response for b in branches] == [[900, 901], [901, 902], [902, 903]]
    assert all(GUIDANCE.get(b) and b.sample_weight == 0.5 for b in branches)
    assert [len(b.student_prompt) - len(seqs[i].student_prompt) for b, i in zip(branches, [0, 0, 1])] == [2, 5, 0]

    # L = sum u D / N + lambda_g sum_branches D / N_g, each with its own count
    totals = method.counts(seqs + branches)
    assert totals == {"tokens": 10.0, "sequences": 2.0, "guidance_tokens": 6.0, "guidance_sequences": 3.0}
    d_main, d_guide = method.step_divergences(seqs), method.step_divergences(branches)
    loss, metrics = method.loss(seqs + branches, totals)
    expected = sum(float(x.sum()) for x in d_main) / 10.0 + 0.5 * sum(float(x.sum()) for x in d_guide) / 6.0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert metrics["topd/guidance_kl"][1] == 6 and metrics["kl/mean"][1] == 10


def test_opsd_teacher_continues_greedily_with_the_adapter_disabled(tmp_path, tiny_lm, tokenizer):
    base = copy.deepcopy(tiny_lm)
    _, ctx, method = build_tiny(tmp_path, tiny_lm, tokenizer)
    for name, param in ctx.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # the student now differs from its base
    context = method.teacher_prompt(problems()[1]) + [300, 301]
    got = method.teacher_continue([context], step=0)[0]
    with torch.no_grad():
        out = base.generate(torch.tensor([context]), attention_mask=torch.ones(1, len(context), dtype=torch.long),
                            max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = out[0, len(context):].tolist()
    if tokenizer.eos_token_id in expected:
        expected = expected[: expected.index(tokenizer.eos_token_id) + 1]
    assert got == expected


def test_a_few_topd_steps_lower_the_loss_with_filter_and_guidance(tmp_path, tiny_lm, tokenizer):
    cfg, ctx, method = build_tiny(tmp_path, tiny_lm, tokenizer)
    torch.manual_seed(0)
    result = method.collect(problems(), step=0)
    units = result.units
    branches = [u for u in units if GUIDANCE.get(u)]
    assert branches and result.metrics["topd/branches"][0] == len(branches)
    assert len(branches) <= 2 * result.metrics["rollout/kept"][0]
    totals = method.counts(units)
    optimizer, _ = build_optimizer(ctx.model, cfg.optim, total_steps=10)
    ctx.model.train()
    losses = []
    for _ in range(5):
        loss, _ = method.loss(units, totals)
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0], losses
