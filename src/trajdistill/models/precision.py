"""One precision policy for every forward pass of a run: `model.dtype` stores the weights,
`model.autocast` picks the compute precision, for the student and the teacher alike.

A teacher computing in bf16 while the student computes in fp32 would see different logits for the
same context, a spurious divergence the loss would then train on.
"""

from __future__ import annotations

import contextlib

import torch

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(mode: str, device: torch.device):
    """`torch.autocast` for `mode` (`none`, `bf16`, `fp16`) on `device`; a no-op for `none`."""
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_AUTOCAST[mode])
