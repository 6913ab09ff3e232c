"""ReNIO/TOPD's scoring passes in `collect` on an FSDP2-sharded model, with uneven work per process.

Launched by tests/train/test_multiprocess_identity.py as one process (all four sequences) and under
`torchrun --nproc_per_node 2` (three sequences on the first process, one on the second, one per
chunk): the teacher's states, the student's token log-probs and the per-token divergences run once
per chunk, and unless the processes run as many chunks as each other one waits in a collective.

With `topd`, TOPD's guidance runs too, with branch points on the first process's first sequence
only: the other process has no branch to continue but must still take part in the teacher's
generation and scoring.

With `filtered`, the whole of `collect` runs on canned rollouts, and the second process keeps none:
TOPD's are all filtered out (as `drop_truncated` or an outcome filter may do on any step); ReNIO,
which scores filtered rollouts too, gets no problem at all (fewer problems than processes). That
process must still take part in every scoring pass, and the first process's units equal those of
one process given only its rollouts.

With `opd:TEACHER_DIR` as the mode, ReNIO runs in the OPD setting with that separate teacher model,
which FSDP shards like the student (its scores must equal the unsharded teacher's).

    python step_scores_fsdp.py OUT_DIR [renio|topd] [scores|filtered|opd:TEACHER_DIR]
"""

import json
import os
import sys
from pathlib import Path

import torch

from trajdistill.config import load_config
from trajdistill.models import load_tokenizer, tiny_model
from trajdistill.methods.onpolicy import TOKEN_WEIGHTS
from trajdistill.methods.renio import SCORE
from trajdistill.records import Problem, Rollout, Verdict
from trajdistill.train.batch import TrainSequence
from trajdistill.train.distributed import finish_process
from trajdistill.train.loop import Trainer
from trajdistill.train.run import build


def sequences() -> list[TrainSequence]:
    gen = torch.Generator().manual_seed(7)
    out = []
    for i in range(4):
        prompt = torch.randint(10, 2000, (4 + i,), generator=gen).tolist()
        response = torch.randint(10, 2000, (2 + 2 * i,), generator=gen).tolist()
        out.append(TrainSequence(prompt, response, teacher_prompt=[11, 12] + prompt, passed=i % 2 == 0))
    return out


def canned_rollouts(method, problems: list[Problem], seqs: list[TrainSequence]) -> list[Rollout]:
    """One finished rollout per problem, the sequences' responses under the method's student prompt."""
    return [Rollout(problem_id=p.id, prompt_ids=method.student_prompt(p), response_ids=s.response, text="",
                    logprobs=None, finished=True, verdict=Verdict(passed=False, status="failed"))
            for p, s in zip(problems, seqs)]


def collect_filtered(method, rank: int, world: int, none: bool) -> dict:
    """`collect` with the second process's rollouts all filtered out, or (`none`) with no problem
    on the second process at all (one process: only the first's)."""
    seqs = sequences()
    problems = [Problem(id=f"p{i}", prompt=f"What is {i} + {i}?", answer=str(2 * i), reference=f"{i} + {i} = {2 * i}")
                for i in range(4)]
    mine = slice(0, 3) if rank == 0 else slice(3, 3 if none else 4)
    method.rollouts = lambda items, step: canned_rollouts(method, items, seqs[mine])
    method.keep = lambda rollout: rank == 0
    result = method.collect(problems[mine], 0)
    return {"units": [[u.response, u.teacher_hidden.sum().item(),
                       None if TOKEN_WEIGHTS.get(u) is None else TOKEN_WEIGHTS.get(u).tolist(), SCORE.get(u)]
                      for u in result.units]}


def main(out: str, method_name: str = "renio", mode: str = "scores") -> None:
    torch.set_num_threads(1)
    tok = load_tokenizer("smollm2-135m-instruct")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    run_dir = Path(out) / "run"
    options = ["topd.guidance=true", "topd.horizon=3"] if method_name == "topd" else []
    if mode.startswith("opd:"):
        options += [f"{method_name}.setting=opd", f"teacher.name={mode.removeprefix('opd:')}"]
    cfg = load_config(None, [f"method={method_name}", *options, "lora.r=4", "lora.alpha=8", "optim.micro_batch_size=1",
                             f"output_dir={run_dir}", "optim.steps=1", "distributed.strategy=fsdp"])
    ctx, method, accelerator = build(cfg, Path(out), model=tiny_model(tok, seed=0), tokenizer=tok)
    trainer = Trainer(cfg, run_dir, method, ctx, list(range(4)), accelerator=accelerator)
    if mode == "filtered":
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, f"rank{trainer.rank}.json").write_text(json.dumps(collect_filtered(method, trainer.rank, world, none=method_name == "renio")))
        if accelerator:
            finish_process(0)
        return
    seqs = sequences()
    mine = {0: seqs[:3], 1: seqs[3:]}[trainer.rank] if world > 1 else seqs
    logprobs = method.student_token_logprobs(mine, 1.0)
    divergences = method.step_divergences(mine)
    branches = []
    if method_name == "topd":  # a branch at token 1 of sequence 0 (the first process's) only
        points = [[1] if s is seqs[0] else [] for s in mine]
        branches = method.guidance_sequences(mine, points, 0)
    from torch.distributed.tensor import DTensor

    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"rank{trainer.rank}.json").write_text(json.dumps({
        "teacher_sharded": any(isinstance(p, DTensor) for p in ctx.teacher.model.parameters()),
        "logprobs": [t.tolist() for t in logprobs], "divergences": [t.tolist() for t in divergences],
        "teacher": [s.teacher_hidden.sum().item() for s in mine],
        "branches": [[b.response, b.teacher_hidden.sum().item()] for b in branches]}))
    if accelerator:
        finish_process(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
