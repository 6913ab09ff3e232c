"""TOPD: reverse-KL OPD with a near-future filter and teacher near-future guidance (the TOPD paper; docs/methods.md).

No public code exists; this is our formulation (docs/methods.md), with both parts switchable so that
"OPD -> +filter -> TOPD" is three presets (opd-reverse-kl, topd-filter, topd):

    y ~ p_S(. | c_S);  D_t = KL(p_S || p_T) at every response token (no grad, in collect)
    1. filter (topd.filter): high-loss tokens = the top q of D_t over the step's response tokens;
       u_t = 0 for a high-loss token whose next K response positions average below rho * mean D,
       u_t = 1 for every other token                            (weighting.near_future_filter)
    2. guidance (topd.guidance): at up to m kept high-loss positions t of each rollout (largest D_t
       first), the teacher continues y_<t for H tokens: g = teacher(c_T + y_<t), greedy by default;
       a branch trains the student along g with student context c_S + y_<t, teacher context c_T + y_<t
    L = sum_{i,t} u_t D_t / N  +  lambda_g * sum_{branches, t} D_t / N_g

N and N_g are the response tokens of the rollouts and of the branches over the whole optimisation
batch (or sequences, with `loss.aggregation: sequence`), summed over processes by `counts()`.
The quantile and mean of D are over this process's share of the step (the whole step on one
process). In OPSD the teacher that continues is the student's base with the adapter disabled,
shown the privileged prompt.
"""

from __future__ import annotations

import torch
from pydantic import Field

from trajdistill.methods.base import StepResult
from trajdistill.methods.onpolicy import SettingOptions
from trajdistill.methods.step_scores import StepScoredDistillation, padded
from trajdistill.models.buckets import several_processes
from trajdistill.records import Problem
from trajdistill.rollout import SamplingParams
from trajdistill.methods.onpolicy import TOKEN_WEIGHTS
from trajdistill.methods.onpolicy_metrics import divergence_metrics
from trajdistill.train.batch import Extra, ScoredBatch, TrainSequence
from trajdistill.weighting import near_future_filter
from trajdistill.weighting.near_future import _high_loss as high_loss_tokens


GUIDANCE: Extra[bool] = Extra("topd.guidance", per="sample", dtype=torch.bool, fill=False)
"""On a guidance branch (a teacher continuation, normalised by its own token count): True."""


class TOPDOptions(SettingOptions):
    """The section `topd:`. TOPD: our formulation, no public code; every value below is our choice (docs/methods.md)."""

    filter: bool = True
    """Near-future filter: drop high-loss tokens whose near future is not divergent."""
    quantile: float = Field(0.2, gt=0.0, le=1.0)
    """q: high-loss tokens are the top q fraction of D_t over the step's response tokens."""
    window: int = Field(8, ge=1)
    """K: near-future window F_t = mean D_{t+1..t+K} (same rollout)."""
    rho: float = Field(1.0, ge=0.0)
    """A high-loss token is kept iff F_t >= rho * mean D."""
    guidance: bool = False
    """Near-future guidance: the teacher continues the student's prefix at kept divergent tokens."""
    max_branches: int = Field(2, ge=1)
    """m: guidance branches per rollout, at its largest kept high-loss D_t."""
    horizon: int = Field(16, ge=1)
    """H: tokens the teacher continues for."""
    guidance_weight: float = Field(1.0, ge=0.0)
    """lambda_g: weight of the guidance term (its own token mean)."""
    guidance_temperature: float = Field(0.0, ge=0.0)
    """Teacher sampling temperature for the continuation; 0 = greedy."""

    only_with = {name: "guidance" for name in ("max_branches", "horizon", "guidance_weight", "guidance_temperature")}



class TOPD(StepScoredDistillation):
    """`method: topd` (presets topd-filter, topd and their OPSD variants)."""

    Options = TOPDOptions

    def collect(self, problems: list[Problem], step: int) -> StepResult:
        result = super().collect(problems, step)
        spec, seqs = self.opts, result.units
        if not (spec.filter or spec.guidance):
            return result
        # Every process scores and guides, rollouts or none (a filter may have dropped all of this
        # process's): under FSDP the scoring passes and the teacher's generation are collective.
        points, metrics = self.weigh_tokens(seqs)
        result.metrics.update(metrics)
        if spec.guidance:
            branches = self.guidance_sequences(seqs, points, step)
            result.units = seqs + branches
            result.metrics["topd/branches"] = (float(len(branches)), 1.0)
            result.metrics["topd/branches_per_rollout"] = (float(len(branches)), float(len(seqs)))
        return result

    def weigh_tokens(self, seqs: list[TrainSequence]) -> tuple[list[list[int]], dict]:
        """Filter weights into each sequence's `TOKEN_WEIGHTS` (u_t); returns the guidance branch points and metrics."""
        spec = self.opts
        values, mask = padded(self.step_divergences(seqs))
        weights = self.filter_weights(values, mask)
        for i, s in enumerate(seqs):
            TOKEN_WEIGHTS.set(s, weights[i, : len(s.response)].float())
        high = high_loss_tokens(values, mask, spec.quantile)
        filtered = float(((weights == 0) & mask).sum())
        metrics = {"topd/filtered_of_high": (filtered, float(high.sum())),
                   "topd/filtered_frac": (filtered, float(mask.sum()))}
        return branch_points(values, high & (weights > 0), spec.max_branches), metrics

    def filter_weights(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        spec = self.opts
        if not spec.filter:
            return torch.ones_like(values)
        return near_future_filter(values, mask, quantile=spec.quantile, window=spec.window, rho=spec.rho)

    # -- guidance -----------------------------------------------------------------------------
    def guidance_contexts(self, seqs: list[TrainSequence], points: list[list[int]]) -> list[tuple[int, list[int], list[int], int]]:
        """`(sequence index, student context c_S + y_<t, teacher context c_T + y_<t, t)` per branch."""
        out = []
        for i, (s, ts) in enumerate(zip(seqs, points)):
            for t in ts:
                prefix = s.response[:t]
                out.append((i, s.student_prompt + prefix, s.teacher_prompt + prefix, t))
        return out

    def guidance_sequences(self, seqs: list[TrainSequence], points: list[list[int]], step: int) -> list[TrainSequence]:
        contexts = self.guidance_contexts(seqs, points)
        if not contexts and not several_processes():  # several: the others may generate and score
            return []
        continuations = self.teacher_continue([c[2] for c in contexts], step)
        branches = [
            TrainSequence(student_prompt=student_ctx, response=cont, teacher_prompt=teacher_ctx,
                          passed=seqs[i].passed, sample_weight=self.opts.guidance_weight,
                          problem_id=seqs[i].problem_id)
            for (i, student_ctx, teacher_ctx, t), cont in zip(contexts, continuations)
            if cont
        ]
        for b in branches:
            GUIDANCE.set(b, True)
        self.cache_teacher_hidden(branches)
        return branches

    def teacher_continue(self, contexts: list[list[int]], step: int) -> list[list[int]]:
        """H tokens of the teacher after each context (greedy unless `topd.guidance_temperature` > 0)."""
        spec = self.opts
        params = SamplingParams(n=1, temperature=spec.guidance_temperature, top_p=1.0, top_k=0,
                                max_new_tokens=spec.horizon, seed=self.cfg.seed * 100_019 + step * 7907 + self.ctx.rank)
        rollouts = self.sample_teacher(contexts, params)  # OPSD: the base, adapter disabled
        return [r.response_ids for r in rollouts]

    # -- loss: the on-policy loss with TOPD's weights ----------------------------------------
    def counts(self, seqs: list[TrainSequence]) -> dict[str, float]:
        main = [s for s in seqs if not GUIDANCE.get(s, False)]
        guide = [s for s in seqs if GUIDANCE.get(s, False)]
        return {"tokens": float(sum(len(s.response) for s in main)), "sequences": float(len(main)),
                "guidance_tokens": float(sum(len(s.response) for s in guide)), "guidance_sequences": float(len(guide))}

    def weights(self, seqs: list[TrainSequence], batch: ScoredBatch, totals: dict) -> tuple[torch.Tensor, float]:
        """Per-token weight with the normaliser folded in: `u_t / N` on rollouts, `lambda_g / N_g` on
        branches (which carry lambda_g as their sample weight)."""
        w, _ = self.token_weights(batch, totals)  # w_i u_t, divided by the length under sequence aggregation
        if self.cfg.loss.aggregation == "sequence":
            main_z, guide_z = totals["sequences"], totals.get("guidance_sequences", 0.0)
        else:
            main_z, guide_z = totals["tokens"], totals.get("guidance_tokens", 0.0)
        guidance = GUIDANCE.of(batch)
        if guidance is None:
            return w / max(main_z, 1.0), 1.0
        guide = guidance[batch.seq_index].to(w.device)
        return torch.where(guide, w / max(guide_z, 1.0), w / max(main_z, 1.0)), 1.0

    def divergence_metrics(self, per_token: torch.Tensor, batch: ScoredBatch) -> dict:
        """The guidance branches' divergence apart (`topd/guidance_kl`), out of `kl/*`."""
        return divergence_metrics(per_token, batch, apart=GUIDANCE.of(batch), apart_name="topd/guidance_kl")


def branch_points(values: torch.Tensor, candidates: torch.Tensor, m: int) -> list[list[int]]:
    """Per row, the positions of the (at most) m largest `values` among `candidates`, in text order."""
    out = []
    for row_values, row_mask in zip(values, candidates):
        positions = row_mask.nonzero().squeeze(-1)
        best = positions[row_values[positions].argsort(descending=True, stable=True)[:m]]
        out.append(sorted(best.tolist()))
    return out
