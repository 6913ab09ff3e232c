"""ReNIO/TOPD's scoring passes in `collect` on an FSDP2-sharded model, with uneven work per process.

Launched by tests/train/test_multiprocess_identity.py as one process (all four sequences) and under
`torchrun --nproc_per_node 2` (three sequences on the first process, one on the second, one per
chunk): the teacher's states, the student's token log-probs and the per-token divergences run once
per chunk, and unless the processes run as many chunks as each other one waits in a collective.

With `topd`, TOPD's guidance runs too, with branch points on the first process's first sequence
only: the other process has no branch to continue but must still take part in the teacher's
generation and scoring.

    python step_scores_fsdp.py OUT_DIR [renio|topd]
"""

import json
import os
import sys
from pathlib import Path

import torch

from trajdistill.config import load_config
from trajdistill.models import load_tokenizer, tiny_model
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


def main(out: str, method_name: str = "renio") -> None:
    torch.set_num_threads(1)
    tok = load_tokenizer("smollm2-135m-instruct")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    run_dir = Path(out) / "run"
    options = ["topd.guidance=true", "topd.horizon=3"] if method_name == "topd" else []
    cfg = load_config(None, [f"method={method_name}", *options, "lora.r=4", "lora.alpha=8", "optim.micro_batch_size=1",
                             f"output_dir={run_dir}", "optim.steps=1", "distributed.strategy=fsdp"])
    ctx, method, accelerator = build(cfg, Path(out), model=tiny_model(tok, seed=0), tokenizer=tok)
    trainer = Trainer(cfg, run_dir, method, ctx, list(range(4)), accelerator=accelerator)
    seqs = sequences()
    mine = {0: seqs[:3], 1: seqs[3:]}[trainer.rank] if world > 1 else seqs
    logprobs = method.student_token_logprobs(mine, 1.0)
    divergences = method.step_divergences(mine)
    branches = []
    if method_name == "topd":  # a branch at token 1 of sequence 0 (the first process's) only
        points = [[1] if s is seqs[0] else [] for s in mine]
        branches = method.guidance_sequences(mine, points, 0)
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"rank{trainer.rank}.json").write_text(json.dumps({
        "logprobs": [t.tolist() for t in logprobs], "divergences": [t.tolist() for t in divergences],
        "teacher": [s.teacher_hidden.sum().item() for s in mine],
        "branches": [[b.response, b.teacher_hidden.sum().item()] for b in branches]}))
    if accelerator:
        finish_process(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
