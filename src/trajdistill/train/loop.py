"""The training loop every method shares. It knows nothing about any particular method.

    for step in steps:
        items   = this process's share of the step's data   (deterministic in the step)
        sampler.sync(model)                                  (engines with their own weights)
        units   = method.collect(items, step)                (rollouts, verdicts, contexts)
        totals  = sum over processes of method.counts(units) (global normaliser)
        for micro-batch in units: backward(method.loss(micro, totals) * world)
        clip, AdamW step, schedule step; log; evaluate; checkpoint
        stop here if SIGINT/SIGTERM arrived during the step, or the verifier keeps failing

Each process's loss is divided by the *global* token (or sequence) count and multiplied by the
number of processes, because DDP averages gradients: the update is then exactly the gradient of
the full optimisation batch, however it is split into processes and micro-batches.
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from trajdistill import RunWarning, UserError
from trajdistill.config import RunConfig, save_config
from trajdistill.models.precision import autocast_context
from trajdistill.files import append_jsonl, atomic_write_jsonl, iter_jsonl_numbered, repair_jsonl_tail
from trajdistill.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trajdistill.train.distributed import shard_untied_head_with_embedding
from trajdistill.train.lockstep import (DataOrder, all_reduce_sums, lockstep_micro_batches, merge_metric_sums,
                                        seed_everything, zero_loss)
from trajdistill.train.optim import build_optimizer, trainable_parameters
from trajdistill.train.progress import RunLog, step_line

VERIFIER_FAILURE_SHARE = 0.5  # a step whose rollouts mostly went unjudged ...
VERIFIER_FAILURE_STEPS = 3  # ... this many steps in a row stops the run
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class RunStopped(Exception):
    """Training stopped early and cleanly (a signal, a full disk, a failing verifier): the run
    directory holds its last checkpoint and `--resume` continues from there. The message is one
    line; the CLI adds the resume command."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """While active, SIGINT and SIGTERM only ask the loop to stop after the current step (the
    loop reads `signum` between steps); a second signal stops at once. Handlers are restored on
    exit. Outside the main thread signals cannot be caught and this does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: the last written checkpoint stays
        self.signum = signum
        print(f"{signal.Signals(signum).name}: stopping after the current step (again to stop at once)",
              file=sys.stderr, flush=True)


def trim_metrics(path: Path, step: int) -> None:
    """Rewrite metrics.jsonl with exactly one line for each of steps 1..`step`.

    A cut-off last line (an append the crash interrupted) is dropped; lines past `step` (logged
    after the checkpoint being resumed) are dropped; of repeated steps the last line wins. Any
    other bad line is damage and an error naming its file and line.
    """
    if not path.exists():
        if step:
            warnings.warn(RunWarning(f"{path} is missing; the metrics of steps 1-{step} are lost"), stacklevel=2)
        return
    repair_jsonl_tail(path)
    rows: dict[int, dict] = {}
    try:
        for number, row in iter_jsonl_numbered(path, torn_tail="error"):
            logged = row.get("step")
            if not isinstance(logged, int) or logged < 1:
                raise UserError(f"{path}:{number}: a metrics line without a step number")
            if logged <= step:
                rows[logged] = row
    except UserError as err:
        raise UserError(f"{err}; fix or delete that line to resume") from None
    missing = [s for s in range(1, step + 1) if s not in rows]
    if missing:
        warnings.warn(RunWarning(f"{path} has no line for step(s) {', '.join(map(str, missing))}; "
                                 "they stay missing"), stacklevel=2)
    atomic_write_jsonl(path, [rows[s] for s in sorted(rows)])


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, method, ctx, train_items: list, accelerator=None,
                 evaluate=None, log_console=True, log: RunLog | None = None, on_metrics=None):
        """`ctx` is the `MethodContext` the trainer built for `method`: the trainer owns its model
        (wrapped here for several processes), sampler and teacher, and the method reads them there."""
        self.cfg, self.run_dir, self.method, self.ctx = cfg, Path(run_dir), method, ctx
        model = ctx.model
        self.model = model
        self.items = train_items
        self.accelerator = accelerator
        self.evaluate = evaluate  # callable(step) -> summary or None
        self.on_metrics = on_metrics  # callable(metrics, step) on the main process (trackers)
        self.rank = accelerator.process_index if accelerator else 0
        self.world = accelerator.num_processes if accelerator else 1
        self.device = next(model.parameters()).device
        self.total_steps = self._total_steps()
        if accelerator is not None and cfg.distributed.strategy == "fsdp":
            shard_untied_head_with_embedding(model, cfg.distributed.cpu_offload)
        self.optimizer, self.scheduler = build_optimizer(model, cfg.optim, self.total_steps)
        if accelerator is not None:
            self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
            ctx.model = self.model
        self.order = DataOrder(len(train_items), cfg.optim.problems_per_step, cfg.seed)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.log_console = log_console and self.rank == 0
        self.log = log if (log is not None and self.rank == 0) else RunLog(None, plain=False)
        self.saved_step = 0  # the newest checkpoint on disk
        self.verifier_failures = 0  # consecutive steps whose rollouts mostly went unjudged
        self.verifier_error = ""  # the last verifier failure seen, for the stop message

    def _total_steps(self) -> int:
        o = self.cfg.optim
        if o.epochs is not None:
            return max(1, math.ceil(o.epochs * len(self.items) / o.problems_per_step))
        return o.steps

    # -- resume -----------------------------------------------------------------------------
    def resume(self) -> int:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return 0
        state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)
        self.ctx.weights_version += 1  # an engine's copy of the weights is stale now
        step = int(state["step"])
        if self.rank == 0:
            trim_metrics(self.metrics_path, step)
        self.saved_step = step
        return step

    # -- one step ---------------------------------------------------------------------------
    def step_items(self, step: int) -> list:
        chosen = [self.items[i] for i in self.order.indices(step)]
        return chosen[self.rank :: self.world]

    def train_step(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        seed_everything(self.cfg.seed * 1_000_003 + step * 1009 + self.rank)
        synced = 0.0
        if self.method.needs_sampler:
            self.ctx.sampler.sync(self.model, self.ctx.weights_version)
            synced = time.perf_counter() - started
        result = self.method.collect(self.step_items(step), step)
        collected = time.perf_counter()
        verdicts = self.method.step_verdicts(result)
        errored = [v for v in verdicts if v.errored]
        if errored:
            self.verifier_error = f"{errored[-1].status}: {errored[-1].detail}".strip(": ")
        checked = all_reduce_sums({"errors": float(len(errored)), "verified": float(len(verdicts))}, self.device)
        totals = all_reduce_sums(self.method.counts(result.units), self.device)
        metric_parts = [result.metrics, {"sync_s": (synced, 1.0)}]  # mean over processes
        if totals.get("tokens", 1.0) <= 0:  # nothing trainable on any process (all filtered out)
            return self._skipped_step(step, started, collected, totals, metric_parts, checked)
        self.model.train()
        micro = lockstep_micro_batches(result.units, self.cfg.optim.micro_batch_size, self.device)
        loss_total = 0.0
        for i, (mb, counts) in enumerate(micro):
            sync = i == len(micro) - 1
            ctx = self.accelerator.no_sync(self.model) if (self.accelerator and not sync) else contextlib.nullcontext()
            with ctx:
                with autocast_context(self.cfg.model.autocast, self.device):  # forward only
                    if mb:
                        loss, parts = self.method.loss(mb, totals)
                        if counts:
                            metric_parts.append(parts)
                        else:  # a filler: the same forwards as a real micro-batch, no contribution
                            loss = loss * 0.0
                    else:
                        loss = zero_loss(self.model)
                scaled = loss * self.world
                if self.accelerator:
                    self.accelerator.backward(scaled)
                else:
                    scaled.backward()
            loss_total += float(loss.detach())
        grad_norm = self._clip()
        self.optimizer.step()
        self.ctx.weights_version += 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = all_reduce_sums({"loss": loss_total}, self.device)["loss"]
        return self._step_metrics(step, started, collected, totals, metric_parts, checked,
                                  {"loss": loss_sum, "grad_norm": grad_norm, "skipped": 0.0})

    def _skipped_step(self, step, started, collected, totals, metric_parts, checked) -> dict[str, float]:
        """A step without a trainable token anywhere (every rollout filtered out): no forward, no
        optimizer step, so the weights and the optimizer's moments stay as they are (a zero loss
        would still move them: AdamW steps along its momentum). The learning-rate schedule advances
        with the step count, as it does for any step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.log.note(f"step {step + 1}: no trainable token on any process; optimizer step skipped")
        return self._step_metrics(step, started, collected, totals, metric_parts, checked,
                                  {"loss": 0.0, "grad_norm": 0.0, "skipped": 1.0})

    def _step_metrics(self, step, started, collected, totals, metric_parts, checked, update) -> dict[str, float]:
        metrics = merge_metric_sums(metric_parts)
        elapsed = time.perf_counter() - started
        tokens = totals.get("tokens", 0.0)
        metrics.update({"step": step + 1, **update, "lr": self.scheduler.get_last_lr()[0], "tokens": tokens,
                        "tokens_per_s": tokens / max(elapsed, 1e-9),
                        "collect_s": collected - started, "update_s": time.perf_counter() - collected})
        if checked["verified"]:
            metrics.update({"rollout/verifier_errors": checked["errors"], "rollout/verified": checked["verified"]})
        return metrics

    def _clip(self) -> float:
        params = trainable_parameters(self.model)
        max_norm = self.cfg.optim.max_grad_norm
        if max_norm is None:
            grads = [p.grad.detach() for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else 0.0
        elif self.accelerator:
            norm = self.accelerator.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # FSDP: a replicated DTensor

    # -- the loop ---------------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None) -> list[dict]:
        start = self.resume() if resume else 0
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
            if start == 0 and self.metrics_path.exists():
                self.metrics_path.unlink()
        history = []
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        self.log.note(f"training steps {start + 1}-{end} of {self.total_steps}" if start < end
                      else f"nothing to train: step {start} of {self.total_steps} is done")
        columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        shown = (("loss", "loss"),) + self.method.progress_metrics
        with Progress(*columns, disable=not self.log_console or self.log.plain) as bar, StopSignals() as signals:
            task = bar.add_task("train", total=self.total_steps, completed=start, info="")
            for step in range(start, end):
                started = time.perf_counter()
                metrics = self.train_step(step)
                done = step + 1
                if self.rank == 0:
                    self._write(self.metrics_path, done, lambda: append_jsonl(self.metrics_path, metrics))
                    if self.on_metrics:
                        self.on_metrics(metrics, step + 1)
                history.append(metrics)
                self.log.progress(step_line(metrics, self.total_steps, self.method.progress_metrics,
                                            time.perf_counter() - started))
                bar.update(task, advance=1, info=" ".join(f"{label} {metrics[key]:.4f}" for label, key in shown
                                                          if key in metrics))
                self._check_verifier(metrics, done)
                stop = all_reduce_sums({"stop": float(signals.signum is not None)}, self.device)["stop"] > 0
                every = self.cfg.eval.every
                if self.evaluate and every and done % every == 0 and done < self.total_steps and not stop:
                    self.evaluate(done)
                ck = self.cfg.checkpoint.every
                if (ck and done % ck == 0) or done == self.total_steps or (stop and self.saved_step != done):
                    self._checkpoint(done)
                if stop:  # even after the last step: the final evaluation and export are left for --resume
                    message = f"interrupted at step {done}"
                    self.log.note(message)
                    raise RunStopped(message, 128 + (signals.signum or signal.SIGINT))
        return history

    def _check_verifier(self, metrics: dict, done: int) -> None:
        """Verifier failures are not wrong answers: a run whose rollouts keep going unjudged stops."""
        verified = metrics.get("rollout/verified", 0.0)
        if verified and metrics["rollout/verifier_errors"] / verified > VERIFIER_FAILURE_SHARE:
            self.verifier_failures += 1
        else:
            self.verifier_failures = 0
        if self.verifier_failures >= VERIFIER_FAILURE_STEPS:
            kept = f"the checkpoint at step {self.saved_step} is kept" if self.saved_step else "no checkpoint was kept"
            message = (f"stopped at step {done}: the verifier failed on more than half of the rollouts in "
                       f"{VERIFIER_FAILURE_STEPS} steps in a row (last: {self.verifier_error or 'unknown'}); "
                       f"these are not wrong answers, so fix the verifier first ({kept})")
            self.log.note(message)
            raise RunStopped(message)

    def _write(self, path: Path, step: int, write) -> None:
        """Run `write`; a full disk ends the run with one line saying what is still intact."""
        try:
            write()
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            if path.suffix == ".jsonl" and path.exists():
                with contextlib.suppress(OSError):
                    repair_jsonl_tail(path)  # a cut-off line from the failed append; truncating needs no space
            kept = (f"the checkpoint at step {self.saved_step} is intact" if self.saved_step
                    else "no checkpoint had been written yet")
            message = f"{err.strerror or 'no space left on device'} writing {path} at step {step}; {kept}"
            self.log.note(message)
            raise RunStopped(message) from None

    def _checkpoint(self, step: int) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()
        # every process: under FSDP the shards are gathered; process 0 writes
        self._write(self.run_dir / "checkpoints" / f"step-{step}", step, lambda: save_checkpoint(
            self.run_dir, step, self.model, self.optimizer, self.scheduler,
            {"data_position": step * self.cfg.optim.problems_per_step},
            keep_last=self.cfg.checkpoint.keep_last))
        self.saved_step = step
        if self.accelerator:
            self.accelerator.wait_for_everyone()
