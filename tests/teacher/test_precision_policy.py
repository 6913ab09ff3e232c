"""One precision policy: the OPSD teacher computes exactly as the student does."""

import pytest
import torch

from trajdistill.config import load_config
from trajdistill.models.precision import autocast_context
from trajdistill.records import Problem, Verdict
from trajdistill.train.batch import collate
from trajdistill.train.loop import Trainer
from trajdistill.verify import Verifiers


def _problems():
    return [Problem(id=f"p{i}", prompt=f"What is {i} + {i + 2}?", answer=str(2 * i + 2),
                    reference=f"{i} + {i + 2} = {2 * i + 2}.") for i in range(4)]


def _opsd_with_the_students_prompt(tmp_path, tiny_lm, tokenizer, autocast: str):
    from trajdistill.train.run import build

    cfg = load_config(None, ["method=opsd", "sampling.n=2", "sampling.max_new_tokens=6", "lora.r=4",
                             "lora.alpha=8", f"output_dir={tmp_path}", "optim.problems_per_step=4",
                             "loss.chunk_size=7", f"model.autocast={autocast}", "optim.steps=1"])
    cfg.prompt.privileged = "{problem}\n\n{instruction}"  # the teacher sees exactly the student prompt
    ctx, method, _ = build(cfg, tmp_path, model=tiny_lm, tokenizer=tokenizer)
    ctx.verifier = Verifiers.of(lambda p, r: Verdict(passed=False, status="failed"))
    return cfg, ctx, method


def _per_token_divergence(cfg, ctx, method, units) -> torch.Tensor:
    batch = collate(units, ctx.pad_id)
    with torch.no_grad(), autocast_context(cfg.model.autocast, ctx.device):
        hidden = method.hidden(units, batch)
        _, per_token = method.divergence(hidden, batch.targets, torch.ones(len(batch.targets)), 1.0)
    return per_token


@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_adapter_off_teacher_on_the_student_prompt_gives_zero_divergence(tmp_path, tiny_lm, tokenizer, autocast):
    cfg, ctx, method = _opsd_with_the_students_prompt(tmp_path, tiny_lm, tokenizer, autocast)
    units = method.collect(_problems(), step=0).units
    assert units and all(u.teacher_prompt == u.student_prompt for u in units)
    per_token = _per_token_divergence(cfg, ctx, method, units)  # a fresh adapter: student == base
    assert per_token.numel() > 0 and per_token.abs().max() <= 1e-7
    trainer = Trainer(cfg, tmp_path / "run", method, ctx, method.train_items(_problems()), log_console=False)
    assert trainer.train_step(0)["kl/mean"] <= 1e-7  # the trainer's forward runs under the same policy


def test_a_teacher_in_another_precision_would_see_a_divergence(tmp_path, tiny_lm, tokenizer):
    """Why the policy is shared: a bf16 teacher against an fp32 student scores its own weights
    under the very same context as different from themselves."""
    cfg, ctx, method = _opsd_with_the_students_prompt(tmp_path, tiny_lm, tokenizer, "none")
    units = method.collect(_problems(), step=0).units
    ctx.teacher.autocast = "bf16"
    assert _per_token_divergence(cfg, ctx, method, units).max() > 1e-4
