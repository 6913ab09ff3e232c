"""LoRA adapters through peft."""

from __future__ import annotations

from trajdistill.config import LoraSpec


def apply_lora(model, spec: LoraSpec):
    """Wrap `model` with a fresh LoRA adapter; only the adapter's weights train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
