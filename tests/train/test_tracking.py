"""`logging.report_to: [tensorboard]` writes event files whose scalars read back as logged."""

import json

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trajdistill.config import load_config


def test_tensorboard_event_file_holds_the_step_and_eval_scalars(tmp_path, tiny_lm, tokenizer):
    from trajdistill.train.run import train_command

    out = tmp_path / "run"
    cfg = load_config(None, [
        "method=opsd", "opsd.diagnostics=false", "data.max_train=4", "data.max_eval=2", "eval.k=[1]",
        "eval.greedy=true", "eval.max_new_tokens=4", "sampling.n=2", "sampling.max_new_tokens=5", "lora.r=4",
        "lora.alpha=8", "optim.steps=2", "optim.problems_per_step=2", "loss.chunk_size=7",
        "logging.report_to=[tensorboard]", f"output_dir={out}"])
    train_command(cfg, model=tiny_lm, tokenizer=tokenizer)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "kl/mean", "eval/greedy", "eval/avg@1"} <= tags
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [
        (r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]
    assert [e.step for e in events.Scalars("eval/greedy")] == [0, 2]  # before and after
