"""One on-policy training step, trajdistill against TRL's trainer for the same method, in the same run.

`--anchor` picks the pair (TRL 1.16):
- `sdft` (default): our OPSD (`configs/opsd-forward-kl.yaml`) against `trl.experimental.sdft.SDFTTrainer`,
  TRL's privileged-context self-distillation: `teacher_model_kind="base"` (the adapter switched off
  is the teacher, as ours), `distillation_mode="full_logits"`, `distillation_alpha=0` (forward KL),
  `num_generations = --n`, no importance-sampling clip; SDFT's teacher prompt is "{prompt}\n\n
  {privileged_context}" and ours is set to the same layout (problem, instruction, then "Reference
  solution:" and the reference), so both teachers read the same token ids (checked and printed).
- `distillation`: our OPD (`configs/opd-forward-kl.yaml`, the teacher a second copy of the model)
  against `trl.DistillationTrainer` (the maintained on-policy trainer: chunked divergence from hidden
  states, `beta=0`: forward KL) with the same second copy as its teacher; both teachers read the
  student's prompt.
- `gkd`: our OPSD against `trl.experimental.gkd.GKDTrainer` (lmbda=1), which TRL 1.16 marks as covered
  by `DistillationTrainer`; its teacher reads the student prompt.

Common to all pairs: ours runs the preset through `trajdistill.train.run.build` and
`Trainer.train_step` (HF sampling, verification, teacher scoring, the chunked divergence from hidden
states, the AdamW step); the presets log TRD's C.5 diagnostics (`diagnostics`, on by default) and an
extra row times the same step with them off. TRL runs `trainer.train()` with the same student and
`peft_config`, AdamW, grad clip 1, temperature 1; `bf16` and `gradient_checkpointing` (on by default
in TRL's configs) are turned off so both sides run fp32 without recomputation, and generation is
forced to `--tokens` new tokens (`min_new_tokens = max_new_tokens`).

The steps alternate (TRL step k, then our step k from TRL's `on_step_end` callback) so that load
from other processes on a shared machine hits both sides alike; round 0 is a warm-up. Step time is
wall time (TRL: `on_step_begin` -> `on_step_end`: generation, both forwards, loss, backward, clip,
AdamW, schedule; the collation of the 8 prompts before `on_step_begin` is not counted), and the
process's CPU time (user + system) over the same interval is shown too (steadier under load).

Nominal FLOPs per step, N = the base model's parameters (tied embedding / LM head counted once,
LoRA adapters ignored), P_s / P_t = real (unpadded) student / teacher prompt tokens, C = completion
tokens of the step:

    generation (prefill + one forward per new token)   2 N (P_s + C)
    teacher forward                                     2 N (P_t + C)
    student forward + backward                          6 N (P_s + C)

(6 N over-counts a LoRA backward, which skips the frozen weights' gradients, and the formula ignores
attention and the implementation's actual LM-head work; it is the same yardstick for both sides.)
The machine's peak is the best of repeated 2048x2048 fp32 `torch.mm` calls on the same threads,
measured before and after the steps.

    .venv/bin/python benchmarks/train_step.py --n 4                          # OPSD vs SDFTTrainer
    .venv/bin/python benchmarks/train_step.py --n 4 --reference-tokens 1000  # ~1,000-token privileged context
    .venv/bin/python benchmarks/train_step.py --anchor distillation --n 4    # OPD vs DistillationTrainer
    .venv/bin/python benchmarks/train_step.py --anchor gkd --n 4             # OPSD vs GKDTrainer

`--n 4` samples 4 responses per problem (2 problems x 4 in a batch of 8: the presets' n), so our
prefix sharing applies (one prefill per problem in sampling, one prompt encoding per problem in the
teacher's scoring and the student's forward/backward); TRL's batch holds each problem 4 times
(SDFT: `num_generations=4`). `--context-tokens T` puts the same worked examples (about T tokens of
other problems with their solutions) before every problem, on both sides. `--reference-tokens T`
makes each reference solution about T tokens (as a reasoning trace used as the reference would
be): the privileged prompt grows, which SDFT's teacher reads as ours does (GKD's and OPD's
teachers do not read it). Defaults: batch 8, 64 tokens, 3 timed steps after a warm-up, 2 threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch

from machine import cpu_description  # benchmarks/machine.py (the script's own directory is on sys.path)

REPO = Path(__file__).resolve().parents[1]
# Our preset for each anchor, and the overrides that make its teacher the anchor's.
# SDFT builds its teacher prompt as "{prompt}\n\n{privileged_context}" (it requires both fields):
# our privileged template is set to the same layout, so both teachers read the same token ids.
SDFT_PRIVILEGED = '"{problem}\\n\\n{instruction}\\n\\nReference solution:\\n{reference}"'
OURS = {"sdft": ("opsd-forward-kl.yaml", [f"prompt.privileged={SDFT_PRIVILEGED}"]), "gkd": ("opsd-forward-kl.yaml", []),
        "distillation": ("opd-forward-kl.yaml", ["teacher.name=smollm2-135m-instruct"])}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def matmul_peak(threads: int, size: int = 2048, repeats: int = 8) -> tuple[float, float, float]:
    """(best, median) wall GFLOP/s of a size x size fp32 matmul on `threads` threads, and GFLOP per
    CPU-second over all repeats (not lowered by waiting for a core on a shared machine)."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    for _ in range(2):
        torch.mm(a, b, out=out)
    times = []
    cpu0 = cpu_seconds()
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - started)
    cpu = cpu_seconds() - cpu0
    flops = 2.0 * size**3
    return flops / min(times) / 1e9, flops / statistics.median(times) / 1e9, flops * repeats / cpu / 1e9


def read_bandwidth(threads: int, megabytes: int = 512, repeats: int = 3) -> float:
    """Best GB/s of summing a `megabytes` fp32 buffer on `threads` threads (reading the weights
    once per decoding step cannot go faster than this)."""
    torch.set_num_threads(threads)
    buf = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - started)
    return buf.numel() * 4 / best / 1e9


class Phases:
    """Wall seconds spent inside wrapped callables, per phase name (ours: where the update goes)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn):
        def timed(*a, **k):
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return timed


# -- ours -----------------------------------------------------------------------------------------
def build_ours(args, tokenizer, run_dir: Path):
    from trajdistill.config import load_config
    from trajdistill.models import load_model
    from trajdistill.rollout import SamplingParams
    from trajdistill.train.loop import Trainer
    from trajdistill.train.run import build, load_run_problems

    total = args.steps + 1
    preset, teacher = OURS[args.anchor]
    cfg = load_config(REPO / "configs" / preset, [*teacher, 
        "model.device=cpu", f"sampling.n={args.n}", "sampling.temperature=1.0", "sampling.top_p=1.0",
        "sampling.top_k=0", f"sampling.max_new_tokens={args.tokens}", f"sampling.batch_size={args.batch}",
        f"optim.problems_per_step={args.batch // args.n}", f"optim.micro_batch_size={args.batch}",
        f"optim.steps={total}", f"output_dir={run_dir}", "sampling.max_prompt_tokens=8192",
    ])
    model = load_model(cfg.model.name, device="cpu")
    ctx, method, _ = build(cfg, run_dir, model=model, tokenizer=tokenizer)
    # Exactly `tokens` new tokens per rollout: EOS does not stop generation (TRL: min_new_tokens).
    method.sampling_params = lambda step: SamplingParams(
        n=args.n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.tokens,
        seed=cfg.seed * 100_003 + step * 7919, stop_at_eos=False)
    problems = with_context(load_run_problems(cfg).train, args.context_tokens, tokenizer)
    problems = with_long_reference(problems, args.reference_tokens, tokenizer)
    trainer = Trainer(cfg, run_dir, method, ctx, problems, log_console=False)
    return cfg, method, trainer


def worked_solutions(problems: list, tokens: int, tokenizer, template: str) -> str:
    """The last problems' prompts and solutions, each in `template` (fields `prompt`, `reference`),
    newest first, until the text is about `tokens` tokens."""
    parts: list[str] = []
    for p in reversed(problems):
        parts.append(template.format(prompt=p.prompt, reference=p.reference))
        if len(tokenizer("\n\n".join(parts))["input_ids"]) >= tokens:
            break
    return "\n\n".join(parts)


def with_long_reference(problems: list, tokens: int, tokenizer) -> list:
    """`problems` whose reference solution (our teacher's privileged context; TRL's teacher does not
    see it) is about `tokens` tokens: the worked solutions of the last problems, then its own, as a
    long reasoning trace would be; unchanged for 0."""
    if tokens <= 0:
        return problems
    lead = worked_solutions(problems, tokens, tokenizer,
                            "Consider a similar problem: {prompt}\nIts solution: {reference}")
    return [dataclasses.replace(p, reference=f"{lead}{OWN_SOLUTION}{p.reference}") for p in problems]


OWN_SOLUTION = "\n\nFor this problem: "  # ends the lead of a lengthened reference


def with_context(problems: list, tokens: int, tokenizer) -> list:
    """`problems` with the same worked examples (the last problems' prompts and solutions, about
    `tokens` tokens) before each prompt; unchanged for 0."""
    if tokens <= 0:
        return problems
    context = worked_solutions(problems, tokens, tokenizer, "Example: {prompt}\nSolution: {reference}")
    return [dataclasses.replace(p, prompt=f"{context}\n\nNow solve: {p.prompt}") for p in problems]


# -- TRL ------------------------------------------------------------------------------------------
class GenerationTimer:
    """Time spent generating on TRL's side and the tokens of its steps (student prompt, teacher
    prompt, completion), gathered by wrapping the trainer's own methods."""

    def __init__(self):
        self.seconds = 0.0
        self.prompt_tokens = 0
        self.teacher_prompt_tokens = 0
        self.completion_tokens = 0

    def timed(self, fn):
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - started
        return wrapper

    def gkd(self, inner):
        """`GKDTrainer.generate_on_policy_outputs` (the teacher reads the student prompt)."""
        def wrapper(model, inputs, generation_config):
            ids, mask, labels = self.timed(inner)(model, inputs, generation_config)
            prompt = int(inputs["prompt_attention_mask"].sum())
            self.prompt_tokens += prompt
            self.teacher_prompt_tokens += prompt
            self.completion_tokens += int((labels != -100).sum())
            return ids, mask, labels
        return wrapper

    def batch(self, inner, teacher_prompts: bool):
        """A method returning the step's batch (`prompt_mask`, `completion_mask`, and with
        `teacher_prompts` the teacher's `teacher_attention_mask` over its prompt + the completion)."""
        def wrapper(*a, **k):
            out = inner(*a, **k)
            prompt, completion = int(out["prompt_mask"].sum()), int(out["completion_mask"].sum())
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.teacher_prompt_tokens += (int(out["teacher_attention_mask"].sum()) - completion
                                           if teacher_prompts else prompt)
            return out
        return wrapper


LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def trl_common(args, out_dir: Path) -> dict:
    """TrainingArguments shared by the three TRL trainers."""
    return dict(output_dir=str(out_dir), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                max_steps=args.steps + 1, learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=1,
                max_grad_norm=1.0, weight_decay=0.0, temperature=1.0, bf16=False, fp16=False,
                gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, seed=0)


def build_trl(args, rows: list[dict], out_dir: Path, callback):
    """The TRL trainer of `args.anchor` on `rows`, its generation wrapped by a `GenerationTimer`."""
    from datasets import Dataset
    from peft import LoraConfig

    from trajdistill.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")  # TRL's own: it sets padding side and pad token
    tokenizer.padding_side = "left"
    student = load_model("smollm2-135m-instruct", device="cpu")
    lora, data, timer = LoraConfig(**LORA), Dataset.from_list(rows), GenerationTimer()
    forced = {"min_new_tokens": args.tokens}
    if args.anchor == "gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        config = GKDConfig(**trl_common(args, out_dir), lmbda=1.0, beta=0.0, max_new_tokens=args.tokens,
                           max_length=None, train_sampling_strategy="sequential")
        trainer = GKDTrainer(model=student, teacher_model=load_model("smollm2-135m-instruct", device="cpu"),
                             args=config, processing_class=tokenizer, train_dataset=data, peft_config=lora,
                             callbacks=[callback])
        trainer.generation_config.min_new_tokens = args.tokens
        trainer.generation_config.max_new_tokens = args.tokens
        trainer.generate_on_policy_outputs = timer.gkd(trainer.generate_on_policy_outputs)
    elif args.anchor == "distillation":
        from trl import DistillationConfig, DistillationTrainer

        config = DistillationConfig(**trl_common(args, out_dir), beta=0.0, max_completion_length=args.tokens,
                                    generation_kwargs=forced, shuffle_dataset=False, disable_dropout=True)
        trainer = DistillationTrainer(model=student, teacher_model=load_model("smollm2-135m-instruct", device="cpu"),
                                      args=config, processing_class=tokenizer, train_dataset=data,
                                      peft_config=lora, callbacks=[callback])
        trainer._generate_single_turn = timer.timed(trainer._generate_single_turn)
        trainer._generate_and_score_completions = timer.batch(trainer._generate_and_score_completions, False)
    else:
        from trl.experimental.sdft import SDFTConfig, SDFTTrainer

        config = SDFTConfig(**trl_common(args, out_dir), num_generations=args.n, max_completion_length=args.tokens,
                            max_prompt_length=None, generation_kwargs=forced, shuffle_dataset=False,
                            teacher_model_kind="base", distillation_mode="full_logits", distillation_alpha=0.0,
                            distillation_is_clip=None, teacher_prompt_template="{prompt}\n\n{privileged_context}")
        trainer = SDFTTrainer(model=student, args=config, processing_class=tokenizer, train_dataset=data,
                              peft_config=lora, callbacks=[callback])
        trainer._generate = timer.timed(trainer._generate)
        trainer._prepare_training_batch = timer.batch(trainer._prepare_training_batch, True)
    return trainer, timer


def trl_rows(args, method, problems) -> list[dict]:
    """The anchor's rows, in our data order: the same user turn as our student prompt; GKD's
    assistant turn (unused at lmbda=1) is the problem's own solution (without a lengthened
    reference's lead); SDFT's privileged context is the reference as our privileged template
    (`SDFT_PRIVILEGED`) places it, one row per problem (it samples `num_generations` per row); the others repeat each problem n times."""
    p = method.cfg.prompt
    rows = []
    for problem in problems:
        user = [{"role": "user", "content": f"{problem.prompt}\n\n{p.instruction}".strip()
                 if p.instruction else problem.prompt}]
        if args.anchor == "gkd":
            solution = (problem.reference or ".").split(OWN_SOLUTION)[-1]
            rows.append({"messages": user + [{"role": "assistant", "content": solution}]})
        elif args.anchor == "distillation":
            rows.append({"prompt": user})
        else:
            rows.append({"prompt": user, "privileged_context": f"Reference solution:\n{problem.reference}"})
    return rows


def trl_prompt_ids(args, trainer, rows: list[dict]) -> tuple[list, list]:
    """The student and teacher prompt token ids TRL builds from the first step's rows."""
    first = rows[: args.batch if args.anchor != "sdft" else args.batch // args.n]
    if args.anchor == "gkd":
        batch = trainer.data_collator(first)
        ids = [i[m.bool()].tolist() for i, m in zip(batch["prompts"], batch["prompt_attention_mask"])]
        return ids, ids
    if args.anchor == "distillation":
        students = [list(s) for s in trainer._tokenize_prompts([r["prompt"] for r in first])[0]]
        return students, students
    students = trainer._tokenize_prompts([r["prompt"] for r in first])
    teachers = trainer._tokenize_prompts(trainer.teacher_context_builder.select_generation_prompts(
        [r["prompt"] for r in first], [r["privileged_context"] for r in first]))
    return [list(s) for s in students], [list(t) for t in teachers]


# -- the run --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anchor", choices=["sdft", "distillation", "gkd"], default="sdft",
                    help="TRL trainer to compare against: SDFTTrainer (our OPSD), DistillationTrainer (our OPD), "
                         "GKDTrainer (our OPSD)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step (both sides)")
    ap.add_argument("--tokens", type=int, default=64, help="completion tokens per sequence (forced)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side, after one warm-up step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1, help="responses per problem (divides --batch)")
    ap.add_argument("--context-tokens", type=int, default=0,
                    help="worked examples of about this many tokens before every problem (both sides)")
    ap.add_argument("--reference-tokens", type=int, default=0,
                    help="make each reference solution (our teacher's privileged context) about this many tokens")
    ap.add_argument("--no-diag-row", action="store_true",
                    help="skip the extra 'ours, diagnostics off' step per round")
    args = ap.parse_args()
    if args.batch % args.n:
        ap.error(f"--n {args.n} must divide --batch {args.batch}")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    load_start = loadavg()

    from transformers import TrainerCallback
    from transformers import __version__ as transformers_version
    from trl import __version__ as trl_version
    from transformers.utils import logging as hf_logging

    from trajdistill.models import load_tokenizer

    hf_logging.set_verbosity_error()
    peak_before = matmul_peak(args.threads)

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    tmp = Path(tempfile.mkdtemp(prefix="train-step-bench-"))
    cfg, method, ours = build_ours(args, tokenizer, tmp / "ours")
    n_params = sum(p.numel() for n, p in ours.model.named_parameters() if "lora_" not in n)
    lora_params = sum(p.numel() for n, p in ours.model.named_parameters() if "lora_" in n)
    from trajdistill.models.backbone import lm_head_weight

    n_head = lm_head_weight(ours.model).numel()  # tied with the embedding: counted once in n_params
    n_body = n_params - n_head  # per token in every position; the head only where logits are needed
    weight_bytes = n_params * 4
    bandwidth = read_bandwidth(args.threads)
    phases = Phases()
    ours.ctx.teacher.response_hidden = phases.wrap("teacher forward", ours.ctx.teacher.response_hidden)
    method.student_hidden = phases.wrap("student forward", method.student_hidden)
    method.divergence = phases.wrap("loss (vocabulary pass, its gradients)", method.divergence)
    ours.optimizer.step = phases.wrap("AdamW", ours.optimizer.step)
    plain_backward = torch.Tensor.backward

    # The problems of every step, in our data order; TRL reads them sequentially, `batch` at a time.
    step_problems = [ours.step_items(s) for s in range(args.steps + 1)]
    per_row = 1 if args.anchor == "sdft" else args.n  # SDFT samples n per row itself
    rows = trl_rows(args, method, [p for ps in step_problems for p in ps for _ in range(per_row)])

    ours_rec: list[dict] = []
    nodiag_rec: list[dict] = []
    trl_rec: list[dict] = []

    def ours_step(step: int, diagnostics: bool) -> dict:
        cfg.options.diagnostics = diagnostics  # the method reads its options every step
        torch.set_num_threads(args.threads)
        phases.seconds = {}
        torch.Tensor.backward = phases.wrap("backward", plain_backward)  # ours only (TRL's steps alternate)
        cpu0, started = cpu_seconds(), time.perf_counter()
        try:
            m = ours.train_step(step)
        finally:
            torch.Tensor.backward = plain_backward
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
        probs = step_problems[step]
        # prefix sharing (logged on above) encodes each problem's prompt once per step: q; every
        # sequence's prompt: p = n q
        q_student = sum(len(method.student_prompt(p)) for p in probs)
        q_teacher = sum(len(method.teacher_prompt(p)) for p in probs)
        return {"wall": wall, "cpu": cpu, "sample": m["collect_s"], "update": m["update_s"],
                "completion": m["tokens"], "p_student": args.n * q_student, "p_teacher": args.n * q_teacher,
                "loss": m["loss"], "q_student": q_student, "q_teacher": q_teacher, "phases": dict(phases.seconds)}

    class Alternate(TrainerCallback):
        """Times each GKD step and runs our step of the same index right after it."""

        def on_step_begin(self, a, state, control, **kw):
            torch.set_num_threads(args.threads)
            self.gen_s, self.gen_p, self.gen_c = timer.seconds, timer.prompt_tokens, timer.completion_tokens
            self.gen_t = timer.teacher_prompt_tokens
            self.cpu0, self.t0 = cpu_seconds(), time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            wall, cpu = time.perf_counter() - self.t0, cpu_seconds() - self.cpu0
            p_s, p_t = timer.prompt_tokens - self.gen_p, timer.teacher_prompt_tokens - self.gen_t
            trl_rec.append({"wall": wall, "cpu": cpu, "sample": timer.seconds - self.gen_s,
                            "update": wall - (timer.seconds - self.gen_s),
                            "completion": timer.completion_tokens - self.gen_c, "p_student": p_s,
                            "p_teacher": p_t, "q_student": p_s, "q_teacher": p_t})
            step = state.global_step - 1
            ours_rec.append(ours_step(step, diagnostics=True))
            if not args.no_diag_row:
                nodiag_rec.append(ours_step(step, diagnostics=False))
            print(f"round {step}{' (warm-up)' if step == 0 else ''}: TRL {trl_rec[-1]['wall']:.1f}s, "
                  f"ours {ours_rec[-1]['wall']:.1f}s"
                  + (f", ours w/o diagnostics {nodiag_rec[-1]['wall']:.1f}s" if nodiag_rec else "")
                  + f", load {loadavg()}", flush=True)

    trl, timer = build_trl(args, rows, tmp / "trl", Alternate())

    # Same prompt token ids on both sides? (SDFT: one row per problem)
    trl_students, trl_teachers = trl_prompt_ids(args, trl, rows)
    same_prompts = trl_students == [method.student_prompt(p) for p in step_problems[0] for _ in range(per_row)]
    same_teacher = trl_teachers == [method.teacher_prompt(p) for p in step_problems[0] for _ in range(per_row)]

    torch.set_num_threads(args.threads)
    trl.train()
    peak_after = matmul_peak(args.threads)
    load_end = loadavg()

    # -- report ---------------------------------------------------------------------------------
    expected = args.batch * args.tokens
    peak = max(peak_before[0], peak_after[0])
    peak_cpu = max(peak_before[2], peak_after[2])
    ours_name = "OPD" if args.anchor == "distillation" else "OPSD"
    trl_name = {"sdft": "TRL SDFTTrainer (base teacher, full_logits, alpha=0)",
                "distillation": "TRL DistillationTrainer (beta=0)", "gkd": "TRL GKDTrainer (lmbda=1, beta=0)"}
    sides = [(f"ours: {ours_name} (preset, diagnostics on)", ours_rec[1:]), (trl_name[args.anchor], trl_rec[1:])]
    if nodiag_rec:
        sides.insert(1, (f"ours: {ours_name}, diagnostics off", nodiag_rec[1:]))

    def summary(rec: list[dict]) -> dict:
        med = lambda key: statistics.median(r[key] for r in rec)  # noqa: E731
        wall, completion = med("wall"), med("completion")
        flops = statistics.median(
            2 * n_params * (r["p_student"] + r["completion"]) + 2 * n_params * (r["p_teacher"] + r["completion"])
            + 6 * n_params * (r["p_student"] + r["completion"]) for r in rec)
        # Executed: each prompt token counted as often as it is encoded (once per problem where shared).
        executed = statistics.median(
            2 * n_params * (r["q_student"] + r["completion"]) + 2 * n_params * (r["q_teacher"] + r["completion"])
            + 6 * n_params * (r["q_student"] + r["completion"]) for r in rec)
        update_flops = statistics.median(
            2 * n_params * (r["q_teacher"] + r["completion"]) + 6 * n_params * (r["q_student"] + r["completion"])
            for r in rec)
        # A LoRA backward computes input gradients (2N per token) but no frozen-weight gradients.
        update_lora = statistics.median(
            2 * n_params * (r["q_teacher"] + r["completion"]) + 4 * n_params * (r["q_student"] + r["completion"])
            for r in rec)
        # The floor: every FLOP at the matmul peak (the LM head only where logits are used, a LoRA
        # backward as input gradients only), and each decoding step no faster than reading the
        # weights once or computing its rows, whichever is slower.
        def floor(r):
            c = r["completion"]
            step = max(weight_bytes / (bandwidth * 1e9), 2 * n_params * args.batch / (peak * 1e9))
            flops = (2 * n_body * r["q_student"] + 2 * n_body * (r["q_teacher"] + c) + 2 * n_head * c
                     + 4 * n_body * (r["q_student"] + c) + 4 * n_head * c)
            return flops / (peak * 1e9) + args.tokens * step
        phase_names = sorted({k for r in rec for k in r.get("phases", {})})
        return {"floor": statistics.median(floor(r) for r in rec),
                "phases": {k: statistics.median(r.get("phases", {}).get(k, 0.0) for r in rec) for k in phase_names},
                "executed": executed / 1e9, "executed_s": executed / wall / 1e9,
                "update_gflops": update_flops / med("update") / 1e9,
                "update_lora_gflops": update_lora / med("update") / 1e9,
                "wall": wall, "cpu": med("cpu"), "sample": med("sample"), "update": med("update"),
                "completion": completion, "p_student": med("p_student"), "p_teacher": med("p_teacher"),
                "tps": completion / wall, "tpcpu": completion / med("cpu"), "gflop": flops / 1e9,
                "gflops": flops / wall / 1e9, "gflops_cpu": flops / med("cpu") / 1e9,
                "walls": [r["wall"] for r in rec]}

    stats = [(name, summary(rec)) for name, rec in sides]
    ref = stats[-1][1]
    print()
    print(f"CPU: {cpu_description()}; TRL {trl_version}, transformers {transformers_version}")
    print(f"SmolLM2-135M-Instruct (N = {n_params / 1e6:.1f}M base params, LoRA r16/alpha32 all-linear "
          f"{lora_params / 1e6:.2f}M trainable), fp32 CPU, torch {torch.__version__}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs; batch {args.batch} sequences ({args.batch // args.n} problems x {args.n}) x "
          f"{args.tokens} forced completion tokens; worked-example context {args.context_tokens} tokens; "
          f"reference solutions of about {args.reference_tokens} tokens (0: as in the data); "
          f"median of {args.steps} steps after 1 warm-up, steps alternating TRL/ours.")
    print(f"Load average (1/5/15 min): {load_start} at start, {load_end} at end -- the cores are shared, "
          "so wall times are noisy; the CPU-time row is steadier.")
    print(f"Same student prompt token ids on both sides: {'yes' if same_prompts else 'NO'}; same teacher prompt "
          f"token ids: {'yes' if same_teacher else 'NO'}; completion tokens "
          f"per step: ours {stats[0][1]['completion']:.0f}, TRL {ref['completion']:.0f} "
          f"(expected {expected}).")
    print(f"Matmul peak (2048x2048 fp32 torch.mm, best of 8): {peak_before[0]:.1f} GFLOP/s before, "
          f"{peak_after[0]:.1f} after (medians {peak_before[1]:.1f}, {peak_after[1]:.1f}); peak used: {peak:.1f}. "
          f"Per CPU-second: {peak_before[2]:.1f} before, {peak_after[2]:.1f} after; used: {peak_cpu:.1f} GFLOP/CPU-s.")
    print()
    header = "| | " + " | ".join(name for name, _ in stats) + " |"
    print(header)
    print("|---" * (len(stats) + 1) + "|")

    def row(label, fmt, key, ratio=False, inverse=False):
        cells = []
        for _, s in stats:
            text = fmt.format(s[key])
            if ratio and s is not ref:
                r = (ref[key] / s[key]) if inverse else (s[key] / ref[key])
                text += f" ({r:.2f}x TRL)"
            cells.append(text)
        print(f"| {label} | " + " | ".join(cells) + " |")

    row("median s/step (wall)", "{:.2f}", "wall", ratio=True, inverse=True)
    print("| wall s of each timed step | " + " | ".join(", ".join(f"{w:.1f}" for w in s["walls"]) for _, s in stats) + " |")
    row("**completion tokens/s**", "**{:.1f}**", "tps", ratio=True)
    row("CPU s/step (user+sys)", "{:.2f}", "cpu", ratio=True, inverse=True)
    row("completion tokens per CPU-second", "{:.1f}", "tpcpu", ratio=True)
    row("sampling s (ours: collect_s, incl. verify)", "{:.2f}", "sample", ratio=True, inverse=True)
    row("update s (teacher + student fwd/bwd + AdamW)", "{:.2f}", "update", ratio=True, inverse=True)
    row("prompt tokens/step, student", "{:.0f}", "p_student")
    row("prompt tokens/step, teacher", "{:.0f}", "p_teacher")
    row("nominal GFLOP/step", "{:.0f}", "gflop")
    row("achieved GFLOP/s (nominal / wall)", "{:.1f}", "gflops", ratio=True)
    print("| % of measured matmul peak (wall) | " + " | ".join(f"{100 * s['gflops'] / peak:.1f}%" for _, s in stats) + " |")
    row("executed GFLOP/step (a shared prompt counted once)", "{:.0f}", "executed")
    print("| executed GFLOP/s, % of peak (wall) | "
          + " | ".join(f"{s['executed_s']:.1f}, {100 * s['executed_s'] / peak:.1f}%" for _, s in stats) + " |")
    print("| update alone: executed GFLOP/s, % of peak | "
          + " | ".join(f"{s['update_gflops']:.1f}, {100 * s['update_gflops'] / peak:.1f}%" for _, s in stats) + " |")
    print("| update alone, LoRA count (student 4N per token, not 6N) | "
          + " | ".join(f"{s['update_lora_gflops']:.1f}, {100 * s['update_lora_gflops'] / peak:.1f}%"
                       for _, s in stats) + " |")
    row("nominal GFLOP per CPU-second", "{:.1f}", "gflops_cpu", ratio=True)
    print("| % of matmul GFLOP per CPU-second | "
          + " | ".join(f"{100 * s['gflops_cpu'] / peak_cpu:.1f}%" for _, s in stats) + " |")
    names = sorted({k for _, s in stats for k in s["phases"]})
    for name in ["backward", "AdamW"] + [k for k in names if k not in ("backward", "AdamW")]:
        if name in names:
            print(f"| update: {name} s | " + " | ".join(f"{s['phases'].get(name, 0.0):.2f}" if s["phases"] else "-"
                                                      for _, s in stats) + " |")
    print("| update: the rest s (collation, weights, metrics) | " + " | ".join(
        f"{s['update'] - sum(s['phases'].values()):.2f}" if s["phases"] else "-" for _, s in stats) + " |")
    row("floor s/step (every FLOP at peak, decoding at memory speed)", "{:.2f}", "floor")
    print("| best possible vs TRL's measured step (TRL s / this floor) | "
          + " | ".join(f"{ref['wall'] / s['floor']:.2f}x" if s is not ref else "-" for _, s in stats) + " |")
    copies = "2 (student + teacher)" if args.anchor != "sdft" else "1 (teacher = adapter off)"
    print("| model copies held | " + " | ".join("1 (teacher = adapter off)" if "ours" in n and ours_name == "OPSD"
                                             else copies for n, _ in stats) + " |")
    print()
    print("Target (issue): ours >= 1.6x TRL completion tokens/s: "
          f"{'met' if stats[0][1]['tps'] >= 1.6 * ref['tps'] else 'NOT met'} with the preset "
          f"({stats[0][1]['tps'] / ref['tps']:.2f}x)"
          + (f", {'met' if stats[1][1]['tps'] >= 1.6 * ref['tps'] else 'NOT met'} with diagnostics off "
             f"({stats[1][1]['tps'] / ref['tps']:.2f}x)" if nodiag_rec else "") + ".")
    print("Executed FLOPs: the same formula with each distinct prompt counted once per step where prefix "
          "sharing encodes it once (ours, with n > 1); equal to nominal for TRL and for distinct prompts.")
    print(f"Floor: executed FLOPs with N_body = {n_body / 1e6:.1f}M per position and the {n_head / 1e6:.1f}M-parameter "
          f"head only on completion positions, student 4N (LoRA), at the peak; plus {args.tokens} decoding steps "
          f"each >= max(reading the {weight_bytes / 1e9:.2f} GB of weights at {bandwidth:.1f} GB/s "
          f"(fp32 sum of 512 MB, best of 3), computing {args.batch} rows at the peak).")
    teachers = {"sdft": "both teachers read the same privileged prompt (P_t > P_s)",
                "distillation": "both teachers read the student prompt (P_t = P_s)",
                "gkd": "ours' teacher reads the privileged prompt (P_t > P_s), TRL's the student prompt"}
    print("Nominal FLOPs = 2N(P_s+C) generation + 2N(P_t+C) teacher forward + 6N(P_s+C) student fwd+bwd; "
          f"{teachers[args.anchor]}.")


if __name__ == "__main__":
    main()
