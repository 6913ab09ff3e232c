"""Prefix sharing under DDP when only one process has repeated prompts.

Launched by tests/models/test_shared_prefix.py under `torchrun --nproc_per_node 2` (gloo):

    python shared_ddp.py OUT_DIR

Process 0's rows repeat a prompt, process 1's are all distinct. DDP broadcasts buffers in
forwards, so both must take the same path (the shared one, two forwards) or the collectives pair
up wrongly and the run hangs. Each process writes its decision and the all-reduced LoRA gradient.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trajdistill.config import LoraSpec
from trajdistill.models import load_tokenizer, tiny_model
from trajdistill.models.lora import apply_lora
from trajdistill.models.shared_prefix import PrefixSharing, shared_prefix_hidden, unshared_hidden
from trajdistill.train.distributed import finish_process

ROWS = {0: ([[5, 17, 300, 42], [5, 17, 300, 42], [7, 8, 9]], [[11, 12, 13], [14, 15], [16, 17, 18, 19]]),
        1: ([[33, 34, 35], [900, 12, 13, 14]], [[20, 21], [22, 23, 24]])}


def lora_model():
    """The tiny model with a LoRA adapter that changes it, the same in every process, in train mode."""
    torch.manual_seed(0)
    model = apply_lora(tiny_model(load_tokenizer("smollm2-135m-instruct"), seed=0), LoraSpec(r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
    return model.train()


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = lora_model()
    wrapped = DistributedDataParallel(model)
    prompts, responses = ROWS[rank]
    shared = PrefixSharing("auto", "student").use(wrapped, prompts)
    run = shared_prefix_hidden if shared else unshared_hidden
    states = run(wrapped, prompts, responses, torch.device("cpu"))
    states.pow(2).mean().backward()
    grad = next(p.grad for n, p in model.named_parameters() if "lora_A" in n)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"shared": shared, "grad": grad.flatten()[:8].tolist()}))
    finish_process()


if __name__ == "__main__":
    main(sys.argv[1])
