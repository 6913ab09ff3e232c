"""`trajdistill train`: build every station from the config, preflight, train, evaluate, export."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from trajdistill import UserError
from trajdistill.config import RunConfig
from trajdistill.data import load_problems, split_problems
from trajdistill.eval.runner import evaluate, summary_markdown
from trajdistill.files import atomic_write_json, atomic_write_text
from trajdistill.methods.base import MethodContext
from trajdistill.models import load_model, load_tokenizer, resolve_device
from trajdistill.models.lora import apply_lora
from trajdistill.records import Problem
from trajdistill.rollout import make_sampler
from trajdistill.teacher import AdapterOffTeacher, FrozenCopyTeacher, SeparateTeacher
from trajdistill.train import preflight
from trajdistill.train.checkpoint import export_model
from trajdistill.train.loop import Trainer
from trajdistill.verify import Verifiers

console = Console(stderr=True)


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


def make_accelerator(device: str = "auto"):
    """accelerate only when launched with several processes (torchrun / accelerate launch).

    On machines without CUDA (or with `model.device: cpu`) it must be told so explicitly, or it
    silently runs every process as an independent single process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())


def build_teacher(cfg: RunConfig, kind: str, student, tokenizer, device):
    """The teacher the method's class asked for: none, the separate `teacher:` model, or the
    student's own base weights (adapter off under LoRA, a frozen copy otherwise)."""
    autocast = device.type == "cuda"
    options = {"autocast_bf16": autocast, "share_prefix": cfg.loss.share_prefix}
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


def build(cfg: RunConfig, run_dir: Path, *, model=None, tokenizer=None):
    """Everything the method's class declares it needs. `model`/`tokenizer` may be injected
    (tests use tiny models)."""
    cls = cfg.method_class
    accelerator = make_accelerator(cfg.model.device)
    device = accelerator.device if accelerator else resolve_device(cfg.model.device)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    if model is None:
        model = load_model(cfg.model.name, dtype=cfg.model.dtype, device=str(device),
                           trust_remote_code=cfg.model.trust_remote_code,
                           attn_implementation=cfg.model.attn_implementation)
    model = model.to(device)
    preflight.check_tokenizer(tokenizer, "student")
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    ctx = MethodContext(cfg=cfg, model=model, tokenizer=tokenizer, device=device, run_dir=run_dir,
                        verifier=make_verifiers(cfg),
                        rank=accelerator.process_index if accelerator else 0,
                        world=accelerator.num_processes if accelerator else 1)
    # One long-lived sampler per run: the method's rollouts and every evaluation.
    ctx.sampler = make_sampler(cfg.sampling.backend, model, tokenizer, batch_size=cfg.sampling.batch_size,
                               progress=False)
    ctx.teacher = build_teacher(cfg, cls.teacher_kind(cfg.options), model, tokenizer, device)
    if ctx.teacher is not None:
        ctx.teacher_sampler = make_sampler(cfg.sampling.backend, ctx.teacher.model, tokenizer,
                                           batch_size=cfg.sampling.batch_size, progress=False,
                                           context=ctx.teacher.as_teacher)
    return ctx, cls(ctx), accelerator


def make_verifiers(cfg: RunConfig) -> Verifiers:
    return Verifiers()


def run_preflight_prompts(cfg: RunConfig, method, problems: list[Problem]) -> None:
    limit = cfg.sampling.max_prompt_tokens
    preflight.check_prompt_lengths(((p.id, what, ids) for p in problems for what, ids in method.checked_prompts(p)),
                                   limit)


def train_command(cfg: RunConfig, *, resume: bool = False, model=None, tokenizer=None,
                  stop_after: int | None = None) -> dict:
    """Run a whole training job; returns the before/after evaluation summaries."""
    run_dir = Path(cfg.output_dir)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    problems = load_run_problems(cfg)  # data errors before the model loads
    ctx, method, accelerator = build(cfg, run_dir, model=model, tokenizer=tokenizer)
    items = method.train_items(problems.train)
    run_preflight_prompts(cfg, method, problems.train)
    is_main = ctx.rank == 0
    eval_dir = run_dir / "eval"

    def evaluate_at(label: str) -> dict | None:
        if not is_main or not problems.eval:
            return None
        ctx.sampler.sync(ctx.model)
        return evaluate(ctx.sampler, ctx.tokenizer, problems.eval, cfg.eval, cfg.prompt, ctx.verifier,
                        out_dir=eval_dir, label=label)

    summaries: dict = {}
    if cfg.eval.before and not (resume and (eval_dir / "before.json").exists()):
        summaries["before"] = evaluate_at("before")
    trainer = Trainer(cfg, run_dir, method, ctx, items, accelerator=accelerator,
                      evaluate=lambda step: evaluate_at(f"step-{step}"))
    trainer.run(resume=resume, stop_after=stop_after)
    if stop_after is not None and stop_after < trainer.total_steps:
        return summaries
    if cfg.eval.after:
        summaries["after"] = evaluate_at("after")
    if is_main:
        model = accelerator.unwrap_model(ctx.model) if accelerator else ctx.model
        export_model(model, ctx.tokenizer, run_dir / "final")
        elapsed = time.perf_counter() - started
        atomic_write_json(run_dir / "timing.json", {"seconds": elapsed})
        finished = [s for s in (summaries.get("before"), summaries.get("after")) if s]
        if finished:
            table = summary_markdown(finished)
            atomic_write_text(run_dir / "eval" / "before_after.md", table)
            console.print(f"\n[bold]{cfg.method}[/] on {cfg.data.train} ({len(problems.eval)} held-out problems), "
                          f"{elapsed / 60:.1f} min\n{table}")
    if accelerator:
        accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()  # exiting with live gloo threads aborts
    return summaries
