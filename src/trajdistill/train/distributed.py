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
