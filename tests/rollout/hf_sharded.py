"""HF generation on an FSDP2-sharded tiny model, with uneven work on the two processes.

Launched by tests/rollout/test_hf_sampler.py as one process (the full model doing both processes'
work) and under `torchrun --nproc_per_node 2` (each process its share, weights sharded):

    python hf_sharded.py OUT_DIR

Process 0 has three prompts (three `generate` calls of 6 tokens, batch size 1), process 1 one
prompt of 11 tokens: unless the sampler keeps them in step, one waits forever in a collective.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from trajdistill.models import load_tokenizer, tiny_model
from trajdistill.rollout.hf import HFSampler
from trajdistill.rollout.sampler import SamplingParams
from trajdistill.train.distributed import finish_process

PROMPTS = [[5, 17, 300, 42], [7, 8], [900, 12, 13, 14, 15, 16], [33, 34, 35]]
WORK = {0: (PROMPTS[:3], 6), 1: (PROMPTS[3:], 11)}


def main(out: str) -> None:
    torch.set_num_threads(1)
    tok = load_tokenizer("smollm2-135m-instruct")
    model = tiny_model(tok, seed=0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    ranks = [dist.get_rank()] if world > 1 else [0, 1]
    sampler = HFSampler(model, tok, batch_size=1, progress=False)
    for rank in ranks:
        prompts, tokens = WORK[rank]
        rollouts = sampler.sample(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=tokens,
                                                          stop_at_eos=False))
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, f"rank{rank}.json").write_text(json.dumps([r.response_ids for r in rollouts]))
    if world > 1:
        finish_process(0)


if __name__ == "__main__":
    main(sys.argv[1])
