"""TOPD: reverse-KL OPD with a near-future filter and teacher near-future guidance (seed 002).

No public code exists; this is our formulation (methods.md), with both parts switchable so that
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

from trajdistill.methods.base import StepResult
from trajdistill.methods.onpolicy import Hidden
from trajdistill.methods.step_scores import StepScoredDistillation, padded
from trajdistill.records import Problem
from trajdistill.rollout import SamplingParams
from trajdistill.train.batch import ScoredBatch, TrainSequence, collate
from trajdistill.weighting import near_future_filter
from trajdistill.weighting.near_future import _high_loss as high_loss_tokens


class TOPD(StepScoredDistillation):
    """`method: topd` (presets topd-filter, topd and their OPSD variants)."""

    def collect(self, problems: list[Problem], step: int) -> StepResult:
        result = super().collect(problems, step)
        spec, seqs = self.cfg.topd, result.units
        if not seqs or not (spec.filter or spec.guidance):
            return result
        points, metrics = self.weigh_tokens(seqs)
        result.metrics.update(metrics)
        if spec.guidance:
            branches = self.guidance_sequences(seqs, points, step)
            result.units = seqs + branches
            result.metrics["topd/branches"] = (float(len(branches)), 1.0)
            result.metrics["topd/branches_per_rollout"] = (float(len(branches)), float(len(seqs)))
        return result

    def weigh_tokens(self, seqs: list[TrainSequence]) -> tuple[list[list[int]], dict]:
        """Filter weights into `meta["token_weights"]`; returns the guidance branch points and metrics."""
        spec = self.cfg.topd
        values, mask = padded(self.step_divergences(seqs))
        weights = self.filter_weights(values, mask)
        for i, s in enumerate(seqs):
            s.meta["token_weights"] = weights[i, : len(s.response)].float()
        high = high_loss_tokens(values, mask, spec.quantile)
        filtered = float(((weights == 0) & mask).sum())
        metrics = {"topd/filtered_of_high": (filtered, float(high.sum())),
                   "topd/filtered_frac": (filtered, float(mask.sum()))}
        return branch_points(values, high & (weights > 0), spec.max_branches), metrics

    def filter_weights(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        spec = self.cfg.topd
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
        if not contexts:
            return []
        continuations = self.teacher_continue([c[2] for c in contexts], step)
        branches = [
            TrainSequence(student_prompt=student_ctx, response=cont, teacher_prompt=teacher_ctx,
                          passed=seqs[i].passed, sample_weight=self.cfg.topd.guidance_weight,
                          meta={"problem_id": seqs[i].meta.get("problem_id"), "guidance": True, "branch_at": t})
            for (i, student_ctx, teacher_ctx, t), cont in zip(contexts, continuations)
            if cont
        ]
        self.cache_teacher_hidden(branches)
        return branches

    def teacher_continue(self, contexts: list[list[int]], step: int) -> list[list[int]]:
        """H tokens of the teacher after each context (greedy unless `topd.guidance_temperature` > 0)."""
        spec = self.cfg.topd
        params = SamplingParams(n=1, temperature=spec.guidance_temperature, top_p=1.0, top_k=0,
                                max_new_tokens=spec.horizon, seed=self.cfg.seed * 100_019 + step * 7907 + self.ctx.rank)
        rollouts = self.sample_teacher(contexts, params)  # OPSD: the base, adapter disabled
        return [r.response_ids for r in rollouts]

    # -- loss ---------------------------------------------------------------------------------
    def counts(self, seqs: list[TrainSequence]) -> dict[str, float]:
        main = [s for s in seqs if not s.meta.get("guidance")]
        guide = [s for s in seqs if s.meta.get("guidance")]
        return {"tokens": float(sum(len(s.response) for s in main)), "sequences": float(len(main)),
                "guidance_tokens": float(sum(len(s.response) for s in guide)), "guidance_sequences": float(len(guide))}

    def topd_token_weights(self, seqs: list[TrainSequence], batch: ScoredBatch, totals: dict) -> torch.Tensor:
        """Per-token weight with the normaliser folded in: `u_t / N` on rollouts, `lambda_g / N_g` on branches."""
        idx = batch.seq_index
        u = torch.cat([s.meta.get("token_weights", torch.ones(len(s.response))) for s in seqs]).float()
        guide = torch.tensor([bool(s.meta.get("guidance")) for s in seqs])[idx]
        w = u * batch.sample_weights[idx]  # branches carry lambda_g as their sample weight
        if self.cfg.loss.aggregation == "sequence":
            w = w / batch.lengths[idx].float()
            main_z, guide_z = totals["sequences"], totals.get("guidance_sequences", 0.0)
        else:
            main_z, guide_z = totals["tokens"], totals.get("guidance_tokens", 0.0)
        return torch.where(guide, w / max(guide_z, 1.0), w / max(main_z, 1.0))

    def loss(self, seqs: list[TrainSequence], totals: dict) -> tuple[torch.Tensor, dict]:
        batch = collate(seqs, self.ctx.pad_id)
        hidden: Hidden = self.hidden_for(seqs, batch)
        device = hidden.student.device
        weights = self.topd_token_weights(seqs, batch, totals).to(device)
        loss, per_token = self.divergence(hidden, batch.targets.to(device), weights, 1.0)
        metrics = topd_metrics(per_token.detach().float().cpu(), batch, seqs)
        metrics.update(self.diagnostics(hidden, batch))
        return loss, metrics


def branch_points(values: torch.Tensor, candidates: torch.Tensor, m: int) -> list[list[int]]:
    """Per row, the positions of the (at most) m largest `values` among `candidates`, in text order."""
    out = []
    for row_values, row_mask in zip(values, candidates):
        positions = row_mask.nonzero().squeeze(-1)
        best = positions[row_values[positions].argsort(descending=True, stable=True)[:m]]
        out.append(sorted(best.tolist()))
    return out


def topd_metrics(per_token: torch.Tensor, batch: ScoredBatch, seqs: list[TrainSequence]) -> dict:
    """`kl/*` on the rollouts' tokens (as OPD logs them) and `topd/guidance_kl` on the branches' tokens."""
    guide = torch.tensor([bool(s.meta.get("guidance")) for s in seqs])[batch.seq_index]
    passed = torch.tensor([bool(p) for p in batch.passed])[batch.seq_index]
    out = {}
    for name, mask in (("kl/mean", ~guide), ("kl/correct", ~guide & passed), ("kl/incorrect", ~guide & ~passed),
                       ("topd/guidance_kl", guide)):
        out[name] = (float(per_token[mask].sum()), float(mask.sum()))
    return out
