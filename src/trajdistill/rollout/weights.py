"""The student's weights as an inference engine needs them: LoRA folded in, plain transformers names.

Both functions read the model without changing it, so they are safe to call between any two
optimisation steps, on a model wrapped by DDP (`.module`) and/or peft.
"""

from __future__ import annotations

import hashlib

import torch

from trajdistill.models.backbone import base_causal_lm


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """State dict of the plain transformers model with the active LoRA update folded in.

    Each LoRA-wrapped weight becomes `W + delta` (peft's own `get_delta_weight`, the update that
    `merge_adapter` would add), computed out of place: the trained model is not touched, and unlike
    merge_adapter/unmerge_adapter its base weights do not pick up rounding error at every sync.
    Only those weights are new tensors; all others are the live ones (detached), not copies.
    Names are the base model's (`.base_layer` removed, adapter tensors dropped).
    """
    base = base_causal_lm(model)
    state = {k.replace(".base_layer.", "."): v.detach() for k, v in base.state_dict().items() if "lora_" not in k}
    for name, module in base.named_modules():
        adapters = _active_lora_adapters(module)
        if not adapters:
            continue
        key = f"{name}.weight"
        for adapter in adapters:
            if module.use_dora.get(adapter, False):
                raise NotImplementedError("syncing DoRA adapters into an inference engine is not supported")
            state[key] = state[key] + module.get_delta_weight(adapter).to(state[key].dtype)
    return state


def _active_lora_adapters(module) -> list[str]:
    """Adapters whose update the module's forward adds on top of its base weight (none when merged
    into it already or disabled)."""
    if not hasattr(module, "get_delta_weight") or not hasattr(module, "base_layer"):
        return []
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return []
    present = set(getattr(module, "lora_A", {})) | set(getattr(module, "lora_embedding_A", {}))
    return [a for a in module.active_adapters if a in present]


def weights_fingerprint(model) -> tuple:
    """Changes whenever the weights that `merged_state_dict` reads may have changed.

    Trainable parameters are hashed by content: an optimizer step changes them, and a content hash
    sees that whatever the optimizer implementation (fused AdamW does not bump tensor version
    counters). Frozen parameters are identified by storage and version counter, which a checkpoint
    load (`copy_`) or a replaced tensor changes; hashing them would cost a pass over the whole model.
    The adapter switches (merged, disabled, active adapters) are part of the fingerprint too.
    """
    base = base_causal_lm(model)
    digest = hashlib.blake2b(digest_size=16)
    frozen = []
    for name, param in base.named_parameters():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy())
        else:
            frozen.append((name, param.data_ptr(), param._version))
    switches = tuple((name, tuple(_active_lora_adapters(m))) for name, m in base.named_modules()
                     if hasattr(m, "get_delta_weight"))
    return digest.hexdigest(), tuple(frozen), switches
