"""Tiny randomly initialised causal LMs for fast tests, with a real tokenizer."""

from __future__ import annotations

import torch


def tiny_model(tokenizer, *, hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
               tie_word_embeddings: bool = True, initializer_range: float = 0.2):
    """A small Llama-architecture model whose vocabulary matches `tokenizer`.

    The initialisation is wider than a real model's (0.2 vs 0.02) so that its next-token
    distributions depend visibly on the context, which gives tests non-trivial divergences.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
