"""Per-step metrics of the on-policy methods, as (sum, count) pairs that processes and
micro-batches add up before dividing (`trajdistill.train.lockstep.merge_metric_sums`)."""

from __future__ import annotations

import torch

from trajdistill.records import Rollout
from trajdistill.train.batch import ScoredBatch


def rollout_metrics(rollouts: list[Rollout], kept: int) -> dict[str, tuple[float, float]]:
    """Sums and counts, so processes can add them up before dividing."""
    n = float(len(rollouts))
    own = [r for r in rollouts if not r.off_policy]
    other = [r for r in rollouts if r.off_policy]
    return {
        "rollout/pass_rate": (sum(bool(r.verdict and r.verdict.passed) for r in own), float(len(own))),
        "rollout/off_policy_pass_rate": (sum(bool(r.verdict and r.verdict.passed) for r in other), float(len(other))),
        "rollout/response_len": (sum(len(r.response_ids) for r in rollouts), n),
        "rollout/truncated": (sum(not r.finished for r in rollouts), n),
        "rollout/kept": (float(kept), n),
    }


def divergence_metrics(per_token: torch.Tensor, batch: ScoredBatch, apart: torch.Tensor | None = None,
                       apart_name: str = "kl/apart") -> dict[str, tuple[float, float]]:
    """Mean per-token divergence on the rollouts' tokens, overall and split by the rollout's
    verifier outcome. `apart` (`[B]` bool, e.g. TOPD's guidance branches) marks sequences reported
    on their own, as `apart_name`, and left out of `kl/*`."""
    passed = torch.tensor([bool(p) for p in batch.passed])[batch.seq_index]
    if apart is None:
        out = {"kl/mean": (float(per_token.sum()), float(per_token.numel()))}
        for name, mask in (("kl/correct", passed), ("kl/incorrect", ~passed)):
            out[name] = (float(per_token[mask].sum()), float(mask.sum()))
        return out
    guide = apart[batch.seq_index]
    out = {}
    for name, mask in (("kl/mean", ~guide), ("kl/correct", ~guide & passed), ("kl/incorrect", ~guide & ~passed),
                       (apart_name, guide)):
        out[name] = (float(per_token[mask].sum()), float(mask.sum()))
    return out
