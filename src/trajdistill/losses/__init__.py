"""Losses: per-token divergences, the fused chunked path, aggregation, sequence objectives."""

from trajdistill.losses.aggregate import aggregate, global_sum
from trajdistill.losses.chunked import chunked_divergence_from_hidden
from trajdistill.losses.divergence import (
    DIVERGENCES,
    canonical_divergence,
    forward_kl,
    generalized_jsd,
    per_token_divergence,
    reverse_kl,
    sampled_token_logprobs,
    sampled_token_loss,
    sampled_token_loss_from_logprobs,
    token_divergence,
)
from trajdistill.losses.logprobs import per_sequence_sum, token_logprobs

try:  # written by another module owner; absent in early checkouts
    from trajdistill.losses.sequence import dpo_loss, redi_loss, sft_loss, simpo_loss
except ImportError:
    pass

__all__ = [
    "DIVERGENCES",
    "aggregate",
    "canonical_divergence",
    "chunked_divergence_from_hidden",
    "forward_kl",
    "generalized_jsd",
    "global_sum",
    "per_sequence_sum",
    "per_token_divergence",
    "reverse_kl",
    "sampled_token_logprobs",
    "sampled_token_loss",
    "sampled_token_loss_from_logprobs",
    "token_divergence",
    "token_logprobs",
]
if "sft_loss" in globals():
    __all__ += ["dpo_loss", "redi_loss", "sft_loss", "simpo_loss"]
