"""A method defined outside the package: registered, configured by its own section, trained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import Field

from trajdistill import UserError
from trajdistill.config import load_config
from trajdistill.methods import method_names, register, unregister
from trajdistill.methods.onpolicy import OnPolicyDistillation, OnPolicyOptions
from trajdistill.train.batch import ScoredBatch


class ConstantWeightOptions(OnPolicyOptions):
    weight: float = Field(1.0, gt=0.0)
    """Every response token's weight u_t."""


class ConstantWeightKL(OnPolicyDistillation):
    """OPSD with a constant per-token weight: L = weight * sum_t D_t / N."""

    Options = ConstantWeightOptions
    fixed_setting = "opsd"
    seen_weights: list[float] = []

    def weights(self, seqs, batch: ScoredBatch, totals):
        w, z = super().weights(seqs, batch, totals)
        ConstantWeightKL.seen_weights.append(self.opts.weight)
        return w * self.opts.weight, z


@pytest.fixture()
def plugin():
    register("const-kl", ConstantWeightKL)
    ConstantWeightKL.seen_weights = []
    yield
    unregister("const-kl")


def test_a_registered_method_has_its_own_validated_section(plugin):
    assert "const-kl" in method_names()
    cfg = load_config(None, ["method=const-kl", "const-kl.weight=0.25", "const-kl.drop_truncated=true"])
    assert cfg.options.weight == 0.25 and cfg.options.drop_truncated
    with pytest.raises(UserError, match="field 'const-kl.weight'"):
        load_config(None, ["method=const-kl", "const-kl.weight=-1"])
    with pytest.raises(UserError, match="field 'const-kl.wieght'"):
        load_config(None, ["method=const-kl", "const-kl.wieght=2"])
    with pytest.raises(UserError, match="field 'const-kl': method opsd does not use"):
        load_config(None, ["method=opsd", "const-kl.weight=2"])


def test_a_registered_method_trains_through_train_command(plugin, tmp_path, tiny_lm, tokenizer):
    from trajdistill.train.run import train_command

    out = tmp_path / "run"
    cfg = load_config(None, [
        "method=const-kl", "const-kl.weight=0.5", "const-kl.diagnostics=false", "data.train=builtin:arith-mix",
        "data.max_train=8", "data.max_eval=2", "eval.before=false", "eval.k=[1]", "eval.greedy=false",
        "eval.max_new_tokens=4", "sampling.n=2", "sampling.max_new_tokens=6", "lora.r=4", "lora.alpha=8",
        "optim.steps=2", "optim.problems_per_step=2", "optim.lr=0.01", "loss.chunk_size=7", f"output_dir={out}"])
    before = {k: v.clone() for k, v in tiny_lm.state_dict().items()}
    train_command(cfg, model=tiny_lm, tokenizer=tokenizer)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(r["loss"] > 0 and r["kl/mean"] > 0 for r in lines)
    assert ConstantWeightKL.seen_weights and set(ConstantWeightKL.seen_weights) == {0.5}
    saved = load_config(out / "config.yaml")  # the run's config names the plugin's section
    assert saved.method == "const-kl" and saved.options.weight == 0.5
    trained = [n for n, p in tiny_lm.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert trained, "no LoRA weight moved"
    assert all(torch.equal(before[k], v) for k, v in tiny_lm.state_dict().items() if "lora" not in k and k in before)


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, None]:
    proc = subprocess.run([sys.executable, "-m", "trajdistill.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    return proc, None


def test_an_unknown_method_fails_before_any_model_loads():
    proc, _ = _cli("train", "configs/demo.yaml", "--set", "method=opsdd")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "field 'method': unknown method 'opsdd'" in lines[0]
    assert "opsd, redi, renio" in lines[0]  # the choices
    # Nothing heavy was loaded on the way: not torch, let alone a model.
    probe = ("import sys\nfrom trajdistill.cli import app\n"
             "try:\n    app(['train', 'configs/demo.yaml', '--set', 'method=opsdd'])\n"
             "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["2", "False", "False"], out.stdout + out.stderr


def test_another_methods_option_is_named():
    proc, _ = _cli("train", "configs/demo.yaml", "--set", "renio.ratio_cap=3")
    assert proc.returncode == 2 and "field 'renio': method opsd does not use the `renio` section" in proc.stderr
    proc, _ = _cli("train", "configs/demo.yaml", "--set", "off_policy_fraction=0.2")
    assert proc.returncode == 2 and "field 'off_policy_fraction': not a top-level option" in proc.stderr
    proc, _ = _cli("train", "configs/sft.yaml", "--set", "loss.divergence=reverse_kl")
    assert proc.returncode == 2 and "field 'loss.divergence': method sft does not use it" in proc.stderr
    proc, _ = _cli("train", "configs/opsd-forward-kl.yaml", "--set", "teacher.name=x")
    assert proc.returncode == 2 and "field 'teacher': method opsd uses the student's own base weights" in proc.stderr


# -- a plugin's own per-token data: carried from collect to the loss in TrainSequence.extras ------

from trajdistill.methods.step_scores import StepScoredDistillation  # noqa: E402
from trajdistill.train.batch import Extra  # noqa: E402

POSITION_WEIGHT: Extra[torch.Tensor] = Extra("decay-kl.position_weight", per="token", dtype=torch.float32, fill=1.0)


class PositionDecayKL(StepScoredDistillation):
    """OPSD with u_t = 0.5 ** t, set per rollout in `collect` and read back, collated, in `weights`:
    the shared records (train/batch.py) know nothing of it."""

    fixed_setting = "opsd"
    seen: list[torch.Tensor] = []

    def collect(self, problems, step):
        result = super().collect(problems, step)
        for s in result.units:
            POSITION_WEIGHT.set(s, 0.5 ** torch.arange(len(s.response), dtype=torch.float32))
        return result

    def weights(self, seqs, batch: ScoredBatch, totals):
        w, z = super().weights(seqs, batch, totals)
        u = POSITION_WEIGHT.of(batch)
        PositionDecayKL.seen.append(u.clone())
        return w * u.to(w.device), z


def test_a_plugins_per_token_tensor_travels_through_collation(tmp_path, tiny_lm, tokenizer):
    from trajdistill.records import Problem
    from trajdistill.train.run import build

    register("decay-kl", PositionDecayKL)
    PositionDecayKL.seen = []
    try:
        cfg = load_config(None, ["method=decay-kl", "decay-kl.diagnostics=false", "sampling.n=2",
                                 "sampling.max_new_tokens=6", "lora.r=4", "lora.alpha=8", "loss.chunk_size=7",
                                 f"output_dir={tmp_path}"])
        _, method, _ = build(cfg, tmp_path, model=tiny_lm, tokenizer=tokenizer)
        problems = [Problem(id=f"p{i}", prompt=f"What is {i} + 1?", answer=str(i + 1),
                            reference=f"{i} + 1 = {i + 1}. The answer is \\boxed{{{i + 1}}}.") for i in range(2)]
        units = method.collect(problems, step=0).units
        assert units
        totals = method.counts(units)
        loss, _ = method.loss(units, totals)
        expected = torch.cat([0.5 ** torch.arange(len(u.response), dtype=torch.float32) for u in units])
        assert torch.equal(PositionDecayKL.seen[-1], expected)  # in the order of the batch's tokens

        # the loss is the token-weighted divergence: u_t scales each token's D_t
        d = torch.cat(method.step_divergences(units))
        assert float(loss.detach()) == pytest.approx(float((expected * d).sum()) / totals["tokens"], rel=1e-5)
    finally:
        unregister("decay-kl")
