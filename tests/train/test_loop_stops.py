"""The training loop stops cleanly: signals, a full disk, a failing verifier; resume trims metrics."""

import errno
import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch

from trajdistill import UserError
from trajdistill.config import load_config
from trajdistill.methods.base import Method, MethodContext, StepResult
from trajdistill.records import Verdict
from trajdistill.train import checkpoint, loop
from trajdistill.train.loop import RunStopped, Trainer, trim_metrics


class Scripted(Method):
    """Pulls a linear layer's weights towards 1; `statuses(step)` are the verdicts of its rollouts
    and `on_collect(step)` runs at the start of each step."""

    def __init__(self, ctx, statuses=lambda step: [], on_collect=lambda step: None):
        super().__init__(ctx)
        self.statuses, self.on_collect = statuses, on_collect

    def collect(self, items, step):
        self.on_collect(step)
        rollouts = [SimpleNamespace(verdict=Verdict(s == "passed", s, "math-verify crashed")) for s in self.statuses(step)]
        return StepResult([step], {}, rollouts)

    def counts(self, units):
        return {"tokens": 1.0}

    def loss(self, units, totals):
        return ((self.ctx.model.weight - 1.0) ** 2).sum(), {}


def trainer(tmp_path, steps=5, every=1, **scripted):
    cfg = load_config(None, [f"optim.steps={steps}", "optim.problems_per_step=1", f"checkpoint.every={every}",
                             "checkpoint.keep_last=10", f"output_dir={tmp_path}"])
    torch.manual_seed(0)
    ctx = MethodContext(cfg=cfg, model=torch.nn.Linear(3, 2), tokenizer=None, device=torch.device("cpu"),
                        verifier=None)
    return Trainer(cfg, tmp_path, Scripted(ctx, **scripted), ctx, list(range(4)), log_console=False)


def metric_steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_trimmed_metrics_hold_one_line_per_step_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 9.0}, {"step": 2}, {"step": 1, "loss": 1.0}, {"step": 3}, {"step": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')  # a cut-off append
    trim_metrics(path, 3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss"] == 1.0  # the later line of a repeated step wins


def test_a_bad_middle_metrics_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: invalid JSON .*fix or delete that line"):
        trim_metrics(path, 3)
    assert path.read_text() == '{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n'  # left for the user to see


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    trainer(tmp_path, steps=5, every=2).run(stop_after=3)  # checkpoint at 2, metrics up to 3
    assert metric_steps(tmp_path / "metrics.jsonl") == [1, 2, 3]
    trainer(tmp_path, steps=5, every=2).run(resume=True)
    assert metric_steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5]


def test_sigterm_during_a_step_finishes_it_checkpoints_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    t = trainer(tmp_path, steps=5, every=0,
                on_collect=lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 1 else None)
    with pytest.raises(RunStopped) as stopped:
        t.run()
    assert str(stopped.value) == "interrupted at step 2"
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert (tmp_path / "checkpoints" / "step-2" / "manifest.json").exists()
    assert metric_steps(tmp_path / "metrics.jsonl") == [1, 2]
    assert signal.getsignal(signal.SIGTERM) == before


def full_disk_on(monkeypatch, module, name):
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, name, fail)


def test_a_full_disk_while_logging_metrics_stops_with_the_intact_checkpoint_named(tmp_path, monkeypatch):
    t = trainer(tmp_path, steps=5, every=1)
    t.run(stop_after=2)
    logged = (tmp_path / "metrics.jsonl").read_bytes()
    full_disk_on(monkeypatch, loop, "append_jsonl")
    with pytest.raises(RunStopped) as stopped:
        trainer(tmp_path, steps=5, every=1).run(resume=True)
    assert str(stopped.value) == (f"No space left on device writing {tmp_path / 'metrics.jsonl'} at step 3; "
                                  "the checkpoint at step 2 is intact")
    assert (tmp_path / "metrics.jsonl").read_bytes() == logged
    assert not (tmp_path / "checkpoints" / "step-3").exists()


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer(tmp_path, steps=5, every=2).run(stop_after=2)
    full_disk_on(monkeypatch, checkpoint, "write_synced")
    with pytest.raises(RunStopped, match=r"writing .*step-4 at step 4; the checkpoint at step 2 is intact"):
        trainer(tmp_path, steps=5, every=2).run(resume=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-2"


def test_verifier_errors_are_counted_and_three_bad_steps_in_a_row_stop_the_run(tmp_path):
    # step 1: 2 of 4 errored (not more than half); steps 2-4: 3 of 4 errored
    statuses = lambda step: ["verifier_error", "verifier_timeout"] + (["passed", "failed"] if step == 0
                                                                      else ["verifier_error", "failed"])
    t = trainer(tmp_path, steps=10, every=2, statuses=statuses)
    with pytest.raises(RunStopped) as stopped:
        t.run()
    assert str(stopped.value) == ("stopped at step 4: the verifier failed on more than half of the rollouts in "
                                  "3 steps in a row (last: verifier_error: math-verify crashed); these are not "
                                  "wrong answers, so fix the verifier first (the checkpoint at step 2 is kept)")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]  # not the failing step
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["rollout/verifier_errors"], r["rollout/verified"]) for r in rows] == [(2, 4), (3, 4), (3, 4), (3, 4)]


def test_a_good_step_resets_the_count_of_bad_verifier_steps(tmp_path):
    bad = ["verifier_error"] * 3 + ["passed"]
    t = trainer(tmp_path, steps=6, every=0, statuses=lambda step: ["passed"] * 4 if step in (2, 5) else bad)
    assert len(t.run()) == 6


def test_a_signal_in_the_last_step_still_stops_before_the_final_evaluation(tmp_path):
    t = trainer(tmp_path, steps=3, every=0,
                on_collect=lambda step: os.kill(os.getpid(), signal.SIGINT) if step == 2 else None)
    with pytest.raises(RunStopped, match="^interrupted at step 3$"):
        t.run()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-3"]
    assert trainer(tmp_path, steps=3, every=0).run(resume=True) == []  # --resume has no step left to train
