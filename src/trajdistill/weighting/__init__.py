"""Weightings: per-sample (ReNIO) and per-token (TOPD near-future filter) weights; no gradients."""

from trajdistill.weighting.near_future import filtered_fraction, near_future_filter
from trajdistill.weighting.renio import global_mean, renio_raw_weights, renio_sample_weights, renio_scores

__all__ = [
    "filtered_fraction",
    "global_mean",
    "near_future_filter",
    "renio_raw_weights",
    "renio_sample_weights",
    "renio_scores",
]
