"""The student's weights as an inference engine needs them: LoRA folded in, plain transformers
names, whole tensors, one at a time.

`iter_merged_weights` reads the model without changing it, so it is safe between any two
optimisation steps, on a model wrapped by DDP (`.module`), sharded in place by FSDP2 (parameters
are DTensors) and/or carrying a peft LoRA adapter. Under FSDP every process must iterate it to
the end together: each sharded tensor is gathered with `full_tensor()`, a collective.
"""

from __future__ import annotations

from typing import Iterator

import torch

from trajdistill.models.backbone import base_causal_lm


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` itself, or the full tensor of an FSDP2 shard (gathered on the shard's device; a
    CPU-offloaded shard is moved to the accelerator first when the process group is NCCL's)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return tensor
    if tensor.device.type == "cpu" and torch.cuda.is_available():
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor.full_tensor()


@torch.no_grad()
def iter_merged_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """`(name, tensor)` for every tensor of the plain transformers model's state dict, with the
    active LoRA update folded in, whole, one tensor gathered at a time (no copy of the model).

    Each LoRA-wrapped weight is `W + delta` (peft's own `get_delta_weight`, the update that
    `merge_adapter` would add), computed out of place: the trained model is not touched, and unlike
    merge_adapter/unmerge_adapter its base weights do not pick up rounding error at every sync.
    Names are the base model's (`.base_layer` removed, adapter tensors dropped). Names that share
    one tensor (a tied embedding and LM head) come one after the other with the same gathered
    tensor, which is gathered once. A yielded tensor is the live one (or a fresh gather) and must
    be copied by the consumer before the next optimizer step.
    """
    base = base_causal_lm(model)
    wrapped = {}
    for name, module in base.named_modules():
        adapters = _active_lora_adapters(module)
        if adapters:
            for adapter in adapters:
                if module.use_dora.get(adapter, False):
                    raise NotImplementedError("syncing DoRA adapters into an inference engine is not supported")
            wrapped[f"{name}.base_layer.weight"] = (module, adapters)
    groups: dict[int, list[str]] = {}  # names by the tensor they hold, in state-dict order
    tensors: dict[int, torch.Tensor] = {}
    for key, value in base.state_dict(keep_vars=True).items():
        if "lora_" in key:
            continue
        groups.setdefault(id(value), []).append(key)
        tensors[id(value)] = value
    for ident, keys in groups.items():
        tensor = whole(tensors[ident].detach())
        for key in keys:
            if key in wrapped:
                module, adapters = wrapped[key]
                for adapter in adapters:
                    tensor = tensor + whole(module.get_delta_weight(adapter)).to(tensor.dtype)
            yield key.replace(".base_layer.", "."), tensor


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """`iter_merged_weights` as a dict (tests and single-process tools; holds every merged weight)."""
    return dict(iter_merged_weights(model))


def _active_lora_adapters(module) -> list[str]:
    """Adapters whose update the module's forward adds on top of its base weight (none when merged
    into it already or disabled)."""
    if not hasattr(module, "get_delta_weight") or not hasattr(module, "base_layer"):
        return []
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return []
    present = set(getattr(module, "lora_A", {})) | set(getattr(module, "lora_embedding_A", {}))
    return [a for a in module.active_adapters if a in present]


def adapter_switches(model) -> tuple:
    """Which adapters each LoRA layer applies now (none while merged or disabled): part of what
    an engine's copy was taken from, besides the weights' version."""
    base = base_causal_lm(model)
    return tuple((name, tuple(_active_lora_adapters(m))) for name, m in base.named_modules()
                 if hasattr(m, "get_delta_weight"))
