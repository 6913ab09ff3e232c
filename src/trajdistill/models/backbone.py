"""Reach the decoder and LM head of any causal LM, including peft-wrapped ones.

Losses work from final hidden states and the head weight, so no [B, T, V] logits tensor is made.
"""

from __future__ import annotations

import torch


def base_causal_lm(model):
    """The underlying transformers model (peft keeps LoRA layers injected in it)."""
    model = getattr(model, "module", model)  # DDP / FSDP wrappers
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (normed) hidden states [B, T, H], the input of the LM head.

    The call goes through the model's own forward (not the bare decoder) so that wrappers such as
    DDP see it and synchronise gradients; `logits_to_keep=1` keeps the head from making [B, T, V].
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        use_cache=False,
        logits_to_keep=1,
    )
    return out.hidden_states[-1]


def lm_head_weight(model) -> torch.Tensor:
    head = base_causal_lm(model).get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("LM heads with a bias are not supported yet")
    return head.weight
