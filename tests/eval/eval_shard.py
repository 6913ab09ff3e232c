"""Evaluate a tiny model on 7 problems and write the summary and samples to OUT_DIR.

Launched by tests/eval/test_sharded_eval.py as one process and under `torchrun --nproc_per_node 2`.
"""

import sys

import torch
import torch.distributed as dist

from trajdistill.config import EvalSpec, PromptSpec
from trajdistill.eval.runner import evaluate
from trajdistill.models import load_tokenizer, tiny_model
from trajdistill.records import Problem, Verdict
from trajdistill.rollout import make_sampler
from trajdistill.train.distributed import finish_process
from trajdistill.verify import Verifiers


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    tok = load_tokenizer("smollm2-135m-instruct")
    sampler = make_sampler("hf", tiny_model(tok, seed=0), tok, batch_size=3, progress=False)
    problems = [Problem(id=f"p{i}", prompt="Add " + " and ".join(str(j) for j in range(i + 1)), answer="a")
                for i in range(7)]  # prompts of different lengths: batches pad differently
    verify = Verifiers.of(lambda p, r: Verdict(passed="a" in r, status="passed" if "a" in r else "failed"))
    spec = EvalSpec(k=[1, 3], max_new_tokens=8, temperature=1.0)
    evaluate(sampler, tok, problems, spec, PromptSpec(), verify, out_dir=out_dir, label="eval",
             rank=rank, world=world)
    if world > 1:
        finish_process(0)


if __name__ == "__main__":
    main(sys.argv[1])
