"""Reach the decoder and LM head of any causal LM, including peft-wrapped and FSDP-sharded ones.

Losses work from final hidden states and the head weight, so no [B, T, V] logits tensor is made.
"""

from __future__ import annotations

import torch


def base_causal_lm(model):
    """The underlying transformers model (peft keeps LoRA layers injected in it)."""
    model = getattr(model, "module", model)  # DDP wrapper (FSDP2 shards the module in place)
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (normed) hidden states [B, T, H], the input of the LM head.

    The call goes through the model's own forward (not the bare decoder) so that wrappers such as
    DDP and FSDP see it (gradient sync, parameter gathering); the decoder's output is caught by a
    forward hook, so the model neither keeps every layer's states (`output_hidden_states`) nor
    makes [B, T, V] logits (`logits_to_keep=1`).
    """
    caught: list[torch.Tensor] = []
    decoder = base_causal_lm(model).get_decoder()
    handle = decoder.register_forward_hook(lambda _module, _args, out: caught.append(out[0]))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return caught[-1]


def lm_head_weight(model) -> torch.Tensor:
    """The LM head weight [V, H], whole even when FSDP shards it.

    FSDP2 leaves the gathered head in place after the forward pass when its unit does not reshard
    after forward (accelerate's FSDP2 puts the head, final norm and tied embedding in such a
    unit); otherwise the unit is gathered here. Gradients into the gathered weight are
    reduce-scattered by FSDP's post-backward like any other.
    """
    head = base_causal_lm(model).get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("LM heads with a bias are not supported yet")
    from torch.distributed.tensor import DTensor

    if isinstance(head.weight, DTensor):
        _owning_fsdp_unit(model, head).unshard()
    return head.weight


def _owning_fsdp_unit(model, module):
    """The innermost FSDP2 module whose unit holds `module`'s parameters."""
    from torch.distributed.fsdp import FSDPModule

    owner = None
    for candidate in getattr(model, "module", model).modules():
        if isinstance(candidate, FSDPModule) and any(m is module for m in candidate.modules()):
            owner = candidate  # modules() walks outer to inner: the last hit is the innermost
    if owner is None:
        raise RuntimeError("the LM head weight is a DTensor but no FSDP module owns it")
    return owner
