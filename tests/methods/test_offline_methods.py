"""SFT / REDI / DPO / SimPO methods on a tiny model: data loading, loss descent, DPO reference."""

import json
import math
from pathlib import Path

import pytest
import torch

from trajdistill import UserError
from trajdistill.config import load_config
from trajdistill.train.optim import build_optimizer


PAIRS = [
    {"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5. \\boxed{5}", "rejected": "2 + 3 = 6. \\boxed{6}"},
    {"prompt": "What is 4 * 2?", "chosen": "4 * 2 = 8. \\boxed{8}", "rejected": "I think it is \\boxed{6}"},
    {"prompt": [{"role": "user", "content": "What is 9 - 4?"}], "chosen": "\\boxed{5}", "rejected": "\\boxed{13}"},
    {"prompt": "What is 7 + 1?", "chosen": "7 + 1 = 8, so \\boxed{8}", "rejected": "7 + 1 = 71 \\boxed{71}"},
]


def write_data(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in PAIRS))
    return pairs, sft


def method_of(preset: str) -> str:
    return load_config(Path("configs") / preset).method


def build_tiny(preset, tmp_path, tiny_lm, tokenizer, extra=()):
    from trajdistill.train.run import build

    pairs, sft = write_data(tmp_path)
    data = sft if preset == "sft.yaml" else pairs
    sets = [f"{method_of(preset)}.dataset={data}", "lora.r=4", "lora.alpha=8", f"output_dir={tmp_path / 'run'}",
            "optim.lr=0.01", "optim.warmup_ratio=0", "optim.schedule=constant", "loss.chunk_size=7", *extra]
    cfg = load_config(Path("configs") / preset, sets)
    ctx, method, _ = build(cfg, tmp_path / "run", model=tiny_lm, tokenizer=tokenizer)
    return cfg, ctx, method


@pytest.mark.parametrize("preset", ["sft.yaml", "redi.yaml", "redi-symmetric.yaml", "dpo.yaml", "simpo.yaml"])
def test_preset_lowers_its_loss_on_a_fixed_batch(preset, tmp_path, tiny_lm, tokenizer):
    # DPO at the preset's beta = 0.001 barely moves in 5 steps of a tiny model; test the math at 0.5
    extra = ["dpo.beta=0.5"] if preset == "dpo.yaml" else []
    cfg, ctx, method = build_tiny(preset, tmp_path, tiny_lm, tokenizer, extra)
    units = method.collect(method.train_items([]), step=0).units
    assert len(units) == 4
    totals = method.counts(units)
    optimizer, _ = build_optimizer(ctx.model, cfg.optim, total_steps=10)
    ctx.model.train()
    losses = []
    for _ in range(5):
        loss, metrics = method.loss(units, totals)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0], losses
    if preset != "sft.yaml":
        assert {"logp/chosen", "logp/rejected", "logp/margin"} <= set(metrics)


def test_micro_batches_accumulate_to_the_full_batch_gradient(tmp_path, tiny_lm, tokenizer):
    _, ctx, method = build_tiny("redi.yaml", tmp_path, tiny_lm, tokenizer)
    units = method.train_items([])
    totals = method.counts(units)
    params = [p for p in ctx.model.parameters() if p.requires_grad]

    def grads(parts):
        ctx.model.zero_grad()
        for part in parts:
            method.loss(part, totals)[0].backward()
        return torch.cat([p.grad.flatten() for p in params]).clone()

    # LoRA B starts at zero, so move it first to make every gradient non-trivial
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    assert torch.allclose(grads([units]), grads([units[:1], units[1:3], units[3:]]), atol=1e-6)


def test_dpo_reference_is_the_starting_model_scored_once_and_cached(tmp_path, tiny_lm, tokenizer):
    _, ctx, method = build_tiny("dpo.yaml", tmp_path, tiny_lm, tokenizer)
    units = method.train_items([])
    assert all(u.ref_chosen is not None and u.ref_chosen < 0 for u in units)
    loss, metrics = method.loss(units, method.counts(units))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)  # policy == reference before training
    cache = tmp_path / "run" / "reference_logps.jsonl"
    assert len(cache.read_text().splitlines()) == 4
    # after an update the reference (adapter disabled) still gives the cached values
    with torch.no_grad():
        for name, p in ctx.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    with method.reference_model() as ref:
        from trajdistill.methods.offline import sequence_logps

        with torch.no_grad():
            logps, _ = sequence_logps(ref, ctx.pad_id, [units[0].prompt], [units[0].chosen], ctx.device)
    assert logps.item() == pytest.approx(units[0].ref_chosen, abs=1e-4)
    assert method.loss(units, method.counts(units))[0].item() != pytest.approx(math.log(2), abs=1e-5)
    # a second load reads the cache instead of scoring again
    fresh = type(method)(ctx)
    fresh.reference_model = None  # would fail if called
    assert [u.ref_rejected for u in fresh.train_items([])] == [u.ref_rejected for u in units]


def test_missing_dataset_and_wrong_columns_are_user_errors(tmp_path, tiny_lm, tokenizer):
    _, _, method = build_tiny("redi.yaml", tmp_path, tiny_lm, tokenizer, ["redi.dataset=null"])
    with pytest.raises(UserError, match="redi.dataset"):
        method.train_items([])
    from trajdistill.models import tiny_model

    _, sft = write_data(tmp_path)
    _, _, method = build_tiny("redi.yaml", tmp_path, tiny_model(tokenizer), tokenizer, [f"redi.dataset={sft}"])
    with pytest.raises(UserError, match="chosen"):
        method.train_items([])


def test_length_limits_drop_rows(tmp_path, tiny_lm, tokenizer):
    _, _, method = build_tiny("simpo.yaml", tmp_path, tiny_lm, tokenizer, ["simpo.max_response_tokens=9"])
    units = method.train_items([])
    assert 0 < len(units) < 4 and all(len(u.chosen) <= 9 and len(u.rejected) <= 9 for u in units)


def test_train_command_runs_redi_with_the_paper_schedule_and_logs_logprobs(tmp_path, tiny_lm, tokenizer):
    from trajdistill.train.run import train_command

    pairs, _ = write_data(tmp_path)
    cfg = load_config(Path("configs/redi.yaml"), [
        f"redi.dataset={pairs}", f"output_dir={tmp_path / 'run'}", "lora.r=4", "lora.alpha=8",
        "optim.problems_per_step=2", "optim.micro_batch_size=1", "optim.epochs=2", "optim.lr=0.01",
        "eval.before=false", "eval.after=false", "data.max_train=4"])
    train_command(cfg, model=tiny_lm, tokenizer=tokenizer)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # 2 epochs x 4 pairs / 2 per step
    assert {"logp/chosen", "logp/rejected", "logp/margin", "grad_norm", "loss"} <= set(rows[0])
    lrs = [r["lr"] for r in rows]  # 1 warmup step (10% rounded up), then linear decay to 0
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.0) and lrs[1] > lrs[2]
    assert (tmp_path / "run" / "final" / "config.json").exists()
