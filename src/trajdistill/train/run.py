"""`trajdistill train`: build every station from the config, preflight, train, evaluate, export."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trajdistill import UserError
from trajdistill.config import DistributedSpec, RunConfig, save_config
from trajdistill.data import load_problems, split_problems
from trajdistill.eval.runner import evaluate, metric_columns, summary_markdown
from trajdistill.files import atomic_write_json, atomic_write_text
from trajdistill.methods.base import MethodContext
from trajdistill.models import load_model, load_tokenizer, resolve_device
from trajdistill.models.buckets import Bucketing
from trajdistill.models.lora import apply_lora
from trajdistill.records import Problem
from trajdistill.rollout import sampler_for
from trajdistill.rollout.sampler import LazySampler
from trajdistill.teacher import AdapterOffTeacher, FrozenCopyTeacher, SeparateTeacher
from trajdistill.train import preflight
from trajdistill.train.checkpoint import export_model
from trajdistill.train.distributed import end_process_group
from trajdistill.train.loop import RunStopped, Trainer
from trajdistill.train.tracking import Trackers
from trajdistill.train.progress import RunLog, eval_line, stderr_console
from trajdistill.train.resume import check_resume
from trajdistill.verify import Verifiers

console = stderr_console()


@dataclass
class Problems:
    train: list[Problem]
    eval: list[Problem]


def load_run_problems(cfg: RunConfig) -> Problems:
    d = cfg.data
    problems = load_problems(d.train, fields=d.fields or None, kind=d.kind)
    if d.eval:
        train, held = problems, load_problems(d.eval, fields=d.fields or None, kind=d.kind)
    else:
        train, held = split_problems(problems, held_out=d.held_out, seed=d.split_seed)
    if d.max_train:
        train = train[: d.max_train]
    if d.max_eval:
        held = held[: d.max_eval]
    if not train:
        raise UserError(f"data.train {d.train}: the split left no training problems (data.held_out={d.held_out})")
    return Problems(train, held)


def make_accelerator(device: str = "auto", distributed: DistributedSpec | None = None):
    """accelerate only when launched with several processes (torchrun / accelerate launch).

    On machines without CUDA (or with `model.device: cpu`) it must be told so explicitly, or it
    silently runs every process as an independent single process. `distributed.strategy` chooses
    DDP or FSDP2; an `accelerate config` file's FSDP_* settings fill in the plugin fields this
    config does not set (e.g. `fsdp_transformer_layer_cls_to_wrap`).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    distributed = distributed or DistributedSpec()
    cpu = device == "cpu" or not torch.cuda.is_available()
    if distributed.strategy == "ddp":
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            raise UserError("the accelerate launch config asks for FSDP but distributed.strategy is ddp; "
                            "set distributed.strategy=fsdp")
        return Accelerator(cpu=cpu)
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import CPUOffloadPolicy

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",  # one unit per decoder layer (`_no_split_modules`)
        reshard_after_forward=distributed.reshard_after_forward,
        cpu_offload=CPUOffloadPolicy() if distributed.cpu_offload else None,
        state_dict_type="FULL_STATE_DICT",
    )
    accelerator = Accelerator(cpu=cpu, fsdp_plugin=plugin)
    if cpu:
        # accelerate enables FSDP only for accelerator devices; torch's FSDP2 itself runs on CPU
        # with gloo, so CPU runs take the very same prepare path.
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


def build_teacher(cfg: RunConfig, kind: str, student, tokenizer, device):
    """The teacher the method's class asked for: none, the separate `teacher:` model, or the
    student's own base weights (adapter off under LoRA, a frozen copy otherwise). It computes in
    the student's precision (`model.autocast`)."""
    autocast = cfg.model.autocast
    options = {"autocast": autocast, "share_prefix": cfg.speed.share_prefix,
               "bucketing": Bucketing(cfg.speed.bucketing, cfg.speed.bucket_cost, "teacher"),
               "packed": cfg.speed.packed_linear}
    if kind == "none":
        return None
    if kind == "separate":
        t = cfg.teacher
        teacher_device = device if t.device == "auto" else resolve_device(t.device)
        teacher_tok = load_tokenizer(t.name, trust_remote_code=t.trust_remote_code)
        teacher = load_model(t.name, dtype=t.dtype, device=str(teacher_device), trust_remote_code=t.trust_remote_code,
                             attn_implementation=t.attn_implementation)
        preflight.check_tokenizer(teacher_tok, "teacher")
        preflight.check_same_vocabulary(tokenizer, teacher_tok, student, teacher)
        return SeparateTeacher(teacher, **options)
    if cfg.lora.enabled:
        return AdapterOffTeacher(student, **options)
    return FrozenCopyTeacher(student, **options)


def shard_frozen_teacher(teacher, accelerator) -> None:
    """Under FSDP a teacher with weights of its own (OPD's model, or OPSD's frozen copy under full
    fine-tuning) is sharded like the student, one unit per decoder layer (accelerate's FSDP2
    preparation): a large teacher replicated on every GPU would not fit beside the student. Its
    forwards then gather layers collectively, which the lockstep micro-batches already keep in
    step. The adapter-off teacher is the student itself, sharded already."""
    from accelerate.utils import DistributedType

    if accelerator is None or accelerator.distributed_type != DistributedType.FSDP:
        return
    if not isinstance(teacher, SeparateTeacher):
        return
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    teacher.model = fsdp2_prepare_model(accelerator, teacher.model)


def build(cfg: RunConfig, run_dir: Path, *, model=None, tokenizer=None):
    """Everything the method's class declares it needs. `model`/`tokenizer` may be injected
    (tests use tiny models)."""
    cls = cfg.method_class
    accelerator = make_accelerator(cfg.model.device, cfg.distributed)
    device = accelerator.device if accelerator else resolve_device(cfg.model.device)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    if model is None:
        model = load_model(cfg.model.name, dtype=cfg.model.dtype, device=str(device),
                           trust_remote_code=cfg.model.trust_remote_code,
                           attn_implementation=cfg.model.attn_implementation)
    model = model.to(device)
    preflight.check_tokenizer(tokenizer, "student")
    if cfg.model.gradient_checkpointing:
        # non-reentrant checkpointing needs no input gradients, so frozen embeddings (LoRA) are fine
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    ctx = MethodContext(cfg=cfg, model=model, tokenizer=tokenizer, device=device, run_dir=run_dir,
                        verifier=make_verifiers(cfg),
                        rank=accelerator.process_index if accelerator else 0,
                        world=accelerator.num_processes if accelerator else 1)
    # One long-lived sampler per run: the method's rollouts and every evaluation.
    ctx.sampler = sampler_for(cfg.sampling, model, tokenizer, packed=cfg.speed.packed_linear)
    ctx.teacher = build_teacher(cfg, cls.teacher_kind(cfg.options), model, tokenizer, device)
    shard_frozen_teacher(ctx.teacher, accelerator)
    if ctx.teacher is not None:  # built on first use: most methods never sample from the teacher
        teacher = ctx.teacher
        ctx.teacher_sampler = LazySampler(lambda: sampler_for(cfg.sampling, teacher.model, tokenizer,
                                                              context=teacher.as_teacher,
                                                              packed=cfg.speed.packed_linear))
    return ctx, cls(ctx), accelerator


def make_verifiers(cfg: RunConfig) -> Verifiers:
    """Verifiers by problem kind; `eval.grading` applies to evaluation and training labels alike."""
    return Verifiers({"math": {"grading": cfg.eval.grading}})


def run_preflight_prompts(cfg: RunConfig, method, problems: list[Problem]) -> None:
    limit = cfg.sampling.max_prompt_tokens
    preflight.check_prompt_lengths(((p.id, what, ids) for p in problems for what, ids in method.checked_prompts(p)),
                                   limit)


def start_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> RunLog:
    """The run directory, its resolved `config.yaml` and `run.log`, before anything heavy loads.

    `--resume` first checks the saved config against this one (`train.resume`).
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return RunLog(None, plain=False)
    if resume:
        check_resume(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log = RunLog(run_dir / "run.log")
    length = f"{cfg.optim.steps} steps" if cfg.optim.epochs is None else f"{cfg.optim.epochs} epochs"
    log.note(f"{'resuming' if resume else 'starting'} {cfg.method} on {cfg.data.train}: model {cfg.model.name}, "
             f"{length}, output {run_dir}")
    return log


def train_command(cfg: RunConfig, *, resume: bool = False, model=None, tokenizer=None,
                  stop_after: int | None = None) -> dict:
    """Run a whole training job; returns the before/after evaluation summaries. The run directory's
    `run.log` ends with the error that stopped the run, if one did."""
    run_dir = Path(cfg.output_dir)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    log = start_run_dir(cfg, run_dir, resume)
    try:
        return _run(cfg, run_dir, log, started, resume=resume, model=model, tokenizer=tokenizer,
                    stop_after=stop_after)
    except RunStopped:
        raise  # the loop wrote why to run.log
    except BaseException as err:
        log.error(err)
        raise


def _run(cfg: RunConfig, run_dir: Path, log: RunLog, started: float, *, resume: bool, model, tokenizer,
         stop_after: int | None) -> dict:
    problems = load_run_problems(cfg)  # data errors before the model loads
    log.note(f"{len(problems.train)} training and {len(problems.eval)} held-out problems; loading {cfg.model.name}")
    ctx, method, accelerator = build(cfg, run_dir, model=model, tokenizer=tokenizer)
    items = method.train_items(problems.train)
    run_preflight_prompts(cfg, method, problems.train)
    is_main = ctx.rank == 0
    eval_dir = run_dir / "eval"

    trackers = Trackers(cfg.logging.report_to, run_dir, cfg.tree(), run_dir.name) if is_main else None

    def evaluate_at(label: str, step: int) -> dict | None:
        """Every process evaluates its share of the held-out problems; process 0 gets the summary."""
        if not problems.eval:
            return None
        began = time.perf_counter()
        log.progress(f"eval {label}: {len(problems.eval)} held-out problems")
        ctx.sampler.sync(ctx.model, ctx.weights_version)
        summary = evaluate(ctx.sampler, ctx.tokenizer, problems.eval, cfg.eval, cfg.prompt, ctx.verifier,
                           out_dir=eval_dir, label=label, rank=ctx.rank, world=ctx.world)
        if summary is not None:
            trackers.log({f"eval/{col}": summary[col]["mean"] for col in metric_columns(summary)}, step)
            log.progress(eval_line(label, summary, time.perf_counter() - began))
        return summary

    summaries: dict = {}
    if cfg.eval.before and not (resume and (eval_dir / "before.json").exists()):
        summaries["before"] = evaluate_at("before", 0)
    trainer = Trainer(cfg, run_dir, method, ctx, items, accelerator=accelerator,
                      evaluate=lambda step: evaluate_at(f"step-{step}", step), log=log,
                      on_metrics=trackers.log if trackers else None)
    trainer.run(resume=resume, stop_after=stop_after)
    if stop_after is not None and stop_after < trainer.total_steps:
        if trackers:
            trackers.close()
        return summaries
    if cfg.eval.after:
        summaries["after"] = evaluate_at("after", trainer.total_steps)
    export_model(ctx.model, ctx.tokenizer, run_dir / "final")  # every process: FSDP gathers the shards
    if is_main:
        elapsed = time.perf_counter() - started
        atomic_write_json(run_dir / "timing.json", {"seconds": elapsed})
        log.note(f"finished in {elapsed / 60:.1f} min; model exported to {run_dir / 'final'}")
        finished = [s for s in (summaries.get("before"), summaries.get("after")) if s]
        if finished:
            table = summary_markdown(finished)
            atomic_write_text(run_dir / "eval" / "before_after.md", table)
            console.print(f"\n[bold]{cfg.method}[/] on {cfg.data.train} ({len(problems.eval)} held-out problems), "
                          f"{elapsed / 60:.1f} min\n{table}")
        trackers.close()
    for sampler in (ctx.sampler, ctx.teacher_sampler):
        if sampler is not None:
            sampler.close()  # before the process group ends: a vLLM engine's shutdown uses it
    end_process_group()
    return summaries
