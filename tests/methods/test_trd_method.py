"""TRD on a tiny model: refinement hygiene, fallbacks, the outcome filter, the saved dataset, and a
stage-3 loss computed along y_r with the refinement prompt as the teacher's context."""

import copy
from pathlib import Path

import pytest
import torch

from trajdistill.verify import Verifiers
from trajdistill import UserError
from trajdistill.config import load_config
from trajdistill.methods.trd import (
    choose_target,
    load_rows,
    refinement_status,
    refinement_table,
    refinement_table_markdown,
)
from trajdistill.records import Problem, Rollout, Verdict


def problems():
    return [Problem(id=f"p{i}", prompt=f"What is {i} + {i + 1}?", answer=str(2 * i + 1),
                    reference=f"{i} + {i + 1} = {2 * i + 1}. The answer is \\boxed{{{2 * i + 1}}}.")
            for i in range(4)]


def fake_verify(problem, response):
    ok = f"\\boxed{{{problem.answer}}}" in response
    return Verdict(passed=ok, status="passed" if ok else "failed")


def build_trd(tmp_path, tiny_lm, tokenizer, *sets):
    from trajdistill.train.run import build

    cfg = load_config(Path("configs/trd-opsd.yaml"), [
        "sampling.max_new_tokens=3", "lora.r=4", "lora.alpha=8", f"output_dir={tmp_path}", "loss.chunk_size=7",
        "optim.problems_per_step=4", *sets])
    ctx, method, _ = build(cfg, tmp_path, model=tiny_lm, tokenizer=tokenizer)
    ctx.verifier = Verifiers.of(fake_verify)
    return ctx, method


def row(**over):
    base = {"problem_id": "p1", "refine_status": "ok", "y_o_passed": False, "y_r_passed": True,
            "y_o_ids": [1, 2], "y_r_ids": [3], "y_o_finished": True, "y_r_finished": True}
    return {**base, **over}


# -- hygiene and fallbacks ----------------------------------------------------------------------
def test_refinement_status_flags_empty_truncated_and_unformatted_refinements():
    assert refinement_status("3 + 4 = 7, \\boxed{7}", True, "math") == "ok"
    assert refinement_status("  \n", True, "math") == "empty"
    assert refinement_status("3 + 4 = 7, \\boxed{7", False, "math") == "truncated"
    assert refinement_status("The answer is 7.", True, "math") == "bad_format"
    assert refinement_status("```python\ndef f():\n    return 1\n```", True, "code") == "ok"
    assert refinement_status("I would return one.", True, "code") == "bad_format"


@pytest.mark.parametrize("status", ["empty", "truncated", "bad_format"])
def test_unusable_refinement_falls_back_to_the_raw_rollout_or_is_dropped(status):
    assert choose_target(row(refine_status=status), "raw", "all") == "y_o"
    assert choose_target(row(refine_status=status), "drop", "all") is None
    assert choose_target(row(), "drop", "all") == "y_r"


@pytest.mark.parametrize("status", ["truncated", "bad_format"])
def test_by_default_every_nonempty_refinement_is_trained_on_as_in_the_paper(status):
    assert choose_target(row(refine_status=status), "none", "all") == "y_r"
    assert choose_target(row(refine_status="empty"), "none", "all") is None
    assert choose_target(row(), "none", "all") == "y_r"


def test_fail_to_pass_filter_keeps_only_repaired_rollouts():
    assert choose_target(row(), "raw", "fail_to_pass") == "y_r"
    for o, r in ((True, True), (True, False), (False, False)):
        assert choose_target(row(y_o_passed=o, y_r_passed=r), "raw", "fail_to_pass") is None
    # a raw fallback is never "fail -> pass", even if its y_r happened to pass
    assert choose_target(row(refine_status="truncated"), "raw", "fail_to_pass") is None


def test_correct_and_incorrect_filters_use_the_stage1_outcome():
    assert choose_target(row(y_o_passed=True), "raw", "correct") == "y_r"
    assert choose_target(row(y_o_passed=True), "raw", "incorrect") is None


def test_refinement_table_counts_joint_outcomes_and_statuses():
    rows = [row(y_o_tokens=10, y_r_tokens=4),
            row(y_o_passed=True, y_r_passed=False, refine_status="truncated", y_o_tokens=20, y_r_tokens=8),
            row(y_o_passed=True, y_r_passed=True, y_o_tokens=30, y_r_tokens=6)]
    for r in rows:
        r["echo_stripped"] = False
    t = refinement_table(rows)
    assert t["joint"] == {"fail_to_pass": 1, "pass_to_fail": 1, "pass_to_pass": 1, "fail_to_fail": 0}
    assert t["y_o_pass"]["mean"] == pytest.approx(2 / 3) and t["y_r_pass"]["mean"] == pytest.approx(2 / 3)
    assert (t["y_o_median_tokens"], t["y_r_median_tokens"], t["y_r_median_tokens_usable"]) == (20, 6, 5)
    assert t["refine_status"]["truncated"] == 1
    assert "| 1 | 1 | 1 | 0 |" in refinement_table_markdown(t)


# -- rows from stages 1-2 -----------------------------------------------------------------------
def fake_rollout(method, problem, text, tokenizer, finished=True):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if finished else [])
    return Rollout(problem_id=problem.id, prompt_ids=method.student_prompt(problem), response_ids=ids, text=text,
                   finished=finished, verdict=fake_verify(problem, text))


def test_echoed_refinement_is_stripped_and_retokenised(tmp_path, tiny_lm, tokenizer):
    _, method = build_trd(tmp_path, tiny_lm, tokenizer)
    p = problems()[1]
    y_o = fake_rollout(method, p, "1 + 2 = 4, \\boxed{4}", tokenizer)
    y_r = fake_rollout(method, p, "**Problem:**\nWhat is 1 + 2?\n\n**Rewritten Solution:**\n1 + 2 = 3, \\boxed{3}",
                       tokenizer)
    r = method.make_row(p, y_o, y_r, method.refinement_prompt(p, y_o.text), step=0)
    assert r["y_r"] == "1 + 2 = 3, \\boxed{3}" and r["echo_stripped"] and r["refine_status"] == "ok"
    assert r["y_r_ids"] == tokenizer(r["y_r"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert (r["y_o_passed"], r["y_r_passed"]) == (False, True)


def test_stage3_trains_along_y_r_with_the_refinement_prompt_as_teacher_context(tmp_path, tiny_lm, tokenizer):
    base = copy.deepcopy(tiny_lm)
    ctx, method = build_trd(tmp_path, tiny_lm, tokenizer)
    gen = torch.Generator().manual_seed(0)
    for name, param in ctx.model.named_parameters():
        if "lora_B" in name:  # student != base, so the adapter-off teacher is visibly the base
            with torch.no_grad():
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    p = problems()[1]
    y_o = fake_rollout(method, p, "1 + 2 = 4, \\boxed{4}", tokenizer)
    y_r = fake_rollout(method, p, "1 + 2 = 3, so \\boxed{3}", tokenizer)
    refine_prompt = method.refinement_prompt(p, y_o.text)
    seq = method.sequence(method.make_row(p, y_o, y_r, refine_prompt, step=0))
    assert seq.response == y_r.response_ids and seq.teacher_prompt == refine_prompt
    assert seq.student_prompt == method.student_prompt(p) and seq.passed is False
    assert p.reference in tokenizer.decode(refine_prompt) and y_o.text in tokenizer.decode(refine_prompt)

    loss, metrics = method.loss([seq], method.counts([seq]))

    def response_logprobs(model, context):
        ids = torch.tensor([context + y_r.response_ids])
        logits = model(input_ids=ids).logits[0, len(context) - 1 : -1]
        return torch.log_softmax(logits.float(), dim=-1)

    with torch.no_grad():
        log_s = response_logprobs(ctx.model, method.student_prompt(p))
        log_t = response_logprobs(base, refine_prompt)
    expected = (log_t.exp() * (log_t - log_s)).sum(-1).mean()  # forward KL, token mean, no clip
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)
    assert metrics["kl/joint/fail_to_pass"][1] == len(y_r.response_ids)
    assert set(metrics) >= {"diag/teacher_epistemic_mass", "diag/log_ppl_gap", "kl/target/y_r"}


def test_raw_fallback_trains_on_y_o_with_the_plain_teacher_context(tmp_path, tiny_lm, tokenizer):
    _, method = build_trd(tmp_path, tiny_lm, tokenizer, "trd.fallback=raw")
    p = problems()[2]
    y_o = fake_rollout(method, p, "2 + 3 = 5, \\boxed{5}", tokenizer)
    y_r = fake_rollout(method, p, "2 + 3 = ", tokenizer, finished=False)
    r = method.make_row(p, y_o, y_r, method.refinement_prompt(p, y_o.text), step=0)
    assert r["refine_status"] == "truncated"
    seq = method.sequence(r)
    assert seq.response == y_o.response_ids and seq.teacher_prompt == method.teacher_prompt(p)
    method.opts.fallback = "drop"
    assert method.sequence(r) is None


# -- sampling, the dataset and restarts ---------------------------------------------------------
def test_opsd_refinement_samples_from_the_base_with_the_adapter_disabled(tmp_path, tiny_lm, tokenizer):
    base = copy.deepcopy(tiny_lm)
    ctx, method = build_trd(tmp_path, tiny_lm, tokenizer)
    for name, param in ctx.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=1.0)
    method.cfg.sampling.temperature = 0.0  # greedy, so the two generations are comparable
    prompt = method.refinement_prompt(problems()[0], "0 + 1 = 1")
    got = method.refine([prompt], ["p0"], step=0)[0].response_ids
    with torch.no_grad():
        expected = base.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert got == expected[0, len(prompt):].tolist()[: len(got)]
    with torch.no_grad():  # the adapter is back on afterwards
        ids = torch.tensor([prompt])
        assert not torch.allclose(ctx.model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_offline_pass_saves_a_dataset_that_restarts_stage3_without_sampling(tmp_path, tiny_lm, tokenizer):
    import datasets
    import pandas as pd

    from trajdistill.models import tiny_model

    _, method = build_trd(tmp_path / "run", tiny_lm, tokenizer)
    items = method.train_items(problems()[:2])
    path = tmp_path / "run" / "rollouts" / "trd.parquet"
    frame = pd.read_parquet(path)
    assert len(frame) == 2 and {"problem", "y_o", "y_r", "y_o_passed", "y_r_passed", "y_o_tokens",
                                "y_r_tokens", "refine_status"} <= set(frame.columns)
    assert datasets.load_dataset("parquet", data_files=str(path), split="train").num_rows == 2
    assert (tmp_path / "run" / "rollouts" / "trd-table.md").is_file()
    assert len(items) == sum(s != "empty" for s in frame["refine_status"])  # the paper's: y_r unless empty

    _, again = build_trd(tmp_path / "restart", tiny_model(tokenizer, seed=0), tokenizer, f"trd.dataset={path}")
    again.ctx.sampler = again.ctx.teacher = None  # any sampling would now fail
    restarted = again.train_items(problems()[1:])  # only rows of training problems are used
    assert [r["problem_id"] for r in restarted] == ["p1"]
    units = again.collect(restarted, step=0).units
    assert [u.response for u in units] == [list(r["y_r_ids"]) for r in restarted if r["refine_status"] != "empty"]


def test_empty_training_set_after_filters_is_a_user_error(tmp_path, tiny_lm, tokenizer):
    _, method = build_trd(tmp_path, tiny_lm, tokenizer, "trd.outcome_filter=fail_to_pass")
    method.sample_dataset = lambda problems: [dict(row(y_o_passed=True), y_o_tokens=2, y_r_tokens=1,
                                                   echo_stripped=False)]
    with pytest.raises(UserError, match="no rollout left"):
        method.train_items(problems()[:1])


def test_online_mode_refines_each_step_and_saves_its_rows(tmp_path, tiny_lm, tokenizer):
    _, method = build_trd(tmp_path, tiny_lm, tokenizer, "trd.mode=online")
    assert method.train_items(problems()) == problems()
    result = method.collect(problems()[:1], step=3)
    assert len(result.units) == 1 and result.metrics["refine/truncated"][1] == 1
    assert load_rows(tmp_path / "rollouts" / "trd-online")[0]["step"] == 3


def test_code_problems_select_the_code_prompts(tmp_path, tiny_lm, tokenizer):
    from trajdistill.data import load_problems
    from trajdistill.methods.trd_prompts import CODE_INSTRUCTION, CODE_REFINE_INSTRUCTION

    _, method = build_trd(tmp_path, tiny_lm, tokenizer)
    p = load_problems("builtin:code")[0]
    student = tokenizer.decode(method.student_prompt(p))
    refine = tokenizer.decode(method.refinement_prompt(p, "def add_two(a, b):\n    return a - b"))
    assert CODE_INSTRUCTION in student and "boxed" not in student
    assert "rewrite your Python solution using the reference solution" in refine
    assert "```python\n" + p.reference.strip("\n") + "\n```" in refine and CODE_REFINE_INSTRUCTION in refine
