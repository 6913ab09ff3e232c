"""Losses: the token log-prob primitive, the fused chunked divergence, the sampled-token estimator,
sequence objectives."""

from trajdistill.losses.chunked import chunked_divergence_from_hidden
from trajdistill.losses.divergence import DIVERGENCES, canonical_divergence, token_divergence
from trajdistill.losses.logprobs import per_sequence_sum, token_logprobs
from trajdistill.losses.sampled_token import sampled_token_objective
from trajdistill.losses.sequence import dpo_loss, pair_logp_metrics, redi_loss, sft_loss, simpo_loss

__all__ = [
    "DIVERGENCES",
    "canonical_divergence",
    "chunked_divergence_from_hidden",
    "dpo_loss",
    "pair_logp_metrics",
    "per_sequence_sum",
    "redi_loss",
    "sampled_token_objective",
    "sft_loss",
    "simpo_loss",
    "token_divergence",
    "token_logprobs",
]
