"""What the trainer and methods need from torch.distributed when accelerate launched several
processes; each is the identity on one process."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_lists(items: list) -> list:
    """Every process's `items`, concatenated in rank order, on every process."""
    if not is_distributed():
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate launch) started; 1 when none."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def end_process_group() -> None:
    """Wait for every process, then destroy the process group (a no-op on one process): exiting
    with live gloo threads aborts the process. A group that vLLM set up inside a single process is
    vLLM's to destroy (its engine's shutdown does)."""
    if is_distributed() and launched_processes() > 1:
        dist.barrier()
        dist.destroy_process_group()


def finish_process(code: int = 0) -> NoReturn:
    """End a process of a multi-process run once its work is written.

    It ends the process group if one is still up (`end_process_group`), flushes what the process printed and logged, then leaves without the interpreter's
    finalisation: gloo's C++ threads torn down by static destructors at interpreter exit abort the
    process now and then ("terminate called without an active exception", SIGABRT, with no Python
    frame left; about 1 two-process run in 15 on a loaded 2-core machine), and the launcher then
    reports a finished run as failed and kills its other processes.
    """
    end_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def shard_untied_head_with_embedding(model, cpu_offload: bool = False) -> bool:
    """Under FSDP2, put a trained LM head that is not tied to the embedding into one unit with the
    embedding and the final norm, kept gathered from forward to backward (as accelerate already
    does for a tied head). Call before accelerate prepares the model; returns whether it did.

    The loss reads the head weight outside the head's own forward (chunk by chunk, no [T, V]
    logits). accelerate's unit for an untied head (final norm + head) runs its post-backward, which
    reduce-scatters the gradient and frees the gathered weight, as soon as the gradient reaches the
    final norm's input, which can come before the loss's gradient into the head weight: that
    gradient then landed in freed memory (a segmentation fault in backward, full fine-tuning of an
    untied model such as Qwen3-8B). A unit that holds the embedding, whose input (token ids) needs
    no gradient, runs its post-backward at the end of backward instead. Cost: the embedding stays
    gathered between forward and backward, like the head (V x H, 1.2 GB in bf16 at Qwen3-8B size).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    from trajdistill.models.backbone import base_causal_lm

    base = base_causal_lm(model)
    embed, head = base.get_input_embeddings(), base.get_output_embeddings()
    if head is None or embed is None or head.weight is embed.weight or not head.weight.requires_grad:
        return False
    decoder = base.get_decoder()
    norm = getattr(decoder, "norm", None)
    group = [m for m in (embed, norm, head) if m is not None]
    fully_shard(group, reshard_after_forward=False, mp_policy=MixedPrecisionPolicy(),
                offload_policy=CPUOffloadPolicy() if cpu_offload else OffloadPolicy())
    return True
