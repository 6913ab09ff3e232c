"""Log-probabilities of given tokens from final hidden states, chunk by chunk.

`log p(y_t) = h_t . W[y_t] / tau - logsumexp(h_t W^T / tau)`. Each chunk is recomputed in the
backward pass (activation checkpointing), so memory is O(chunk x V), not O(N x V).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from trajdistill.losses.chunked import head_logits


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float):
    # fp32 logits; a lower-precision head is upcast one vocabulary slice at a time, never whole
    logits = head_logits(hidden.float(), weight, None, torch.float32) / temperature
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
) -> torch.Tensor:
    """[N] log-probs of `targets` [N] given hidden states [N, H] and an LM head weight [V, H]."""
    pieces = []
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for start in range(0, hidden.shape[0], chunk_size):
        args = (hidden[start : start + chunk_size], weight, targets[start : start + chunk_size], temperature)
        if needs_grad:
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(*args))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0)


def per_sequence_sum(values: torch.Tensor, seq_index: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Sum per-token values [N] into per-sequence totals [B]."""
    return torch.zeros(num_seqs, dtype=values.dtype, device=values.device).index_add_(0, seq_index, values)
