"""ReNIO: reweight likely-negative rollouts by the student-to-teacher ratio on their tokens (the ReNIO paper; docs/methods.md).

    y ~ p_S(. | c_S)                                   (rollout, as in OPD / OPSD)
    r_t = min(log p_S(y_t) - log p_T(y_t), C)          (both at the sampling temperature)
    s_i = mean of r_t over the pivotal tokens r_t >= delta   (0 if there are none)
    w_i = min(exp(s_i / tau_w) / mean_batch exp(s / tau_w), 10)      (no gradient)
    L   = (1/B) sum_i w_i mean_t D_t(i)                (authors: forward KL, per-vocab clip 0.05)

The verifier's label never enters the loss; the step log reports how well `s_i` separates the
incorrect rollouts from the correct ones (ROC AUC, `renio/auc`).

Normalisation (`renio.normalize`):
- `batch` (ours, default): the mean over the whole optimisation batch, across processes and
  micro-batches. Each process's sum of raw weights `exp(s_i / tau_w)` rides on `counts()`
  (`renio_weight_sum`), which the trainer all-reduces with the token and sequence counts, so
  the weights do not depend on how the batch is split.
- `micro` (the authors' code): the mean within each micro-batch on each device; a micro-batch of
  one sequence then makes every weight 1.

Log-probs: the student's are the sampler's (`Rollout.logprobs`, full distribution at the
sampling temperature, the policy that the loss then differentiates); a forward pass replaces them
only where the sampler gave none (off-policy rows). The teacher's come from its hidden states,
which are cached for the loss (`StepScoredDistillation`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from trajdistill.eval.auc import mann_whitney_u
from trajdistill.methods.base import StepResult
from trajdistill.methods.onpolicy import SettingOptions, rollout_metrics, rollout_sequence
from trajdistill.methods.step_scores import StepScoredDistillation, padded
from trajdistill.records import Problem
from trajdistill.train.batch import Extra, ScoredBatch, TrainSequence
from trajdistill.weighting import renio_raw_weights, renio_sample_weights, renio_scores


# What ReNIO carries on each `TrainSequence` (its `extras`), from `collect` to the loss:
STUDENT_LOGPROBS: Extra[torch.Tensor] = Extra("renio.student_logprobs", per="token", dtype=torch.float64)
"""log p_S(y_t) at the sampling temperature, one per response token."""
TEACHER_LOGPROBS: Extra[torch.Tensor] = Extra("renio.teacher_logprobs", per="token", dtype=torch.float64)
"""log p_T(y_t) at the sampling temperature, one per response token."""
SCORE: Extra[float] = Extra("renio.score", per="sample", dtype=torch.float64)
"""s_i."""
RAW_WEIGHT: Extra[float] = Extra("renio.raw_weight", per="sample", dtype=torch.float64, fill=1.0)
"""The unnormalised weight exp(s_i / tau_w)."""


class ReNIOOptions(SettingOptions):
    """ReNIO sample weights (the ReNIO paper; docs/methods.md). The section `renio:`; presets renio-opd / renio-opsd set C and delta."""

    ratio_cap: float = 2.0
    """C: cap on the log-ratio r_t = min(log p_S(y_t) - log p_T(y_t), C). Authors: OPD 2.0, OPSD 2.5."""
    threshold: float = 1.0
    """delta: pivotal tokens have r_t >= delta. Authors: OPD 1.0, OPSD 0.8."""
    tau: float = Field(1.0, gt=0.0)
    """tau_w in w_i = exp(s_i / tau_w)."""
    weight_cap: float = Field(10.0, gt=0.0)
    """Cap on the normalised weight (applied after normalising, as the authors do)."""
    normalize: Literal["batch", "micro"] = "batch"
    """batch: divide by the mean raw weight over the whole optimisation batch, across processes
    and micro-batches (ours); micro: within each micro-batch on each device (the authors' code)."""



class ReNIO(StepScoredDistillation):
    """`method: renio` in the `opd` or `opsd` setting (presets renio-opd, renio-opsd)."""

    Options = ReNIOOptions
    needs_sampling_logprobs = True
    progress_metrics = (("kl", "kl/mean"), ("pass", "rollout/pass_rate"), ("auc", "renio/auc"))

    # -- collect: score every rollout, keep the trained ones ------------------------------------
    def collect(self, problems: list[Problem], step: int) -> StepResult:
        sampled = self.rollouts(problems, step)
        rollouts = [r for r in sampled if r.response_ids]
        teacher_prompts = {p.id: self.teacher_prompt(p) for p in problems}
        # Every rollout is scored, also those the outcome filter drops: the AUC needs both classes.
        seqs = [rollout_sequence(r, teacher_prompts[r.problem_id]) for r in rollouts]
        scores, pivotal = self.score(seqs, rollouts)
        for r, score in zip(rollouts, scores.tolist()):
            r.score = score
        keep = [self.keep(r) for r in rollouts]
        kept = [s for s, k in zip(seqs, keep) if k]
        metrics = rollout_metrics(sampled, len(kept))
        metrics.update(score_metrics(scores, [bool(r.verdict.passed) for r in rollouts]))
        metrics["renio/pivotal_frac"] = (float(sum(p for p, k in zip(pivotal.tolist(), keep) if k)),
                                         float(len(kept)))
        metrics.update(self.extreme_weights(kept))
        return StepResult(kept, metrics, sampled)

    def extreme_weights(self, kept: list[TrainSequence]) -> dict[str, tuple[float, float]]:
        """Largest and smallest weight of the step, normalised over this process's kept rollouts.

        Exact on one process with `normalize: batch` (several processes: the mean of their extremes;
        `micro`: the weights actually used differ). The exact mean is logged by `loss`.
        """
        if not kept:
            return {}
        raw = torch.tensor([RAW_WEIGHT.get(s, 1.0) for s in kept], dtype=torch.float64)
        w = (raw / raw.mean()).clamp(max=self.opts.weight_cap)
        return {"renio/weight_max": (float(w.max()), 1.0), "renio/weight_min": (float(w.min()), 1.0)}

    def score(self, seqs: list[TrainSequence], rollouts) -> tuple[torch.Tensor, torch.Tensor]:
        """`(s [B], has_pivotal [B])`; stores both log-prob rows on each sequence for the loss.
        Every process runs it, rollouts or none: its scoring passes are collective under FSDP."""
        temperature = self.cfg.sampling.temperature
        teacher = self.teacher_token_logprobs(seqs, temperature)
        missing = [i for i, r in enumerate(rollouts) if r.logprobs is None or len(r.logprobs) != len(r.response_ids)]
        forward = dict(zip(missing, self.student_token_logprobs([seqs[i] for i in missing], temperature)))
        student = [forward[i] if i in forward else torch.tensor(r.logprobs) for i, r in enumerate(rollouts)]
        for s, sl, tl in zip(seqs, student, teacher):
            STUDENT_LOGPROBS.set(s, sl)
            TEACHER_LOGPROBS.set(s, tl)
        return self.weigh(seqs)

    def weigh(self, seqs: list[TrainSequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """From the sequences' log-probs: store `s_i` and the raw weight `exp(s_i / tau_w)`;
        returns `(s [B], has_pivotal [B])`."""
        student, mask = padded([STUDENT_LOGPROBS.get(s) for s in seqs])
        teacher, _ = padded([TEACHER_LOGPROBS.get(s) for s in seqs])
        r = self.opts
        scores, pivotal = renio_scores(student, teacher, mask, ratio_cap=r.ratio_cap, threshold=r.threshold)
        raw = renio_raw_weights(scores, r.tau)
        for s, score, w in zip(seqs, scores.tolist(), raw.tolist()):
            SCORE.set(s, score)
            RAW_WEIGHT.set(s, w)
        return scores, pivotal

    # -- normalisation and loss -----------------------------------------------------------------
    def counts(self, seqs: list[TrainSequence]) -> dict[str, float]:
        out = super().counts(seqs)
        out["renio_weight_sum"] = float(sum(RAW_WEIGHT.get(s, 1.0) for s in seqs))
        return out

    def sample_weights(self, batch: ScoredBatch, totals: dict) -> torch.Tensor:
        """`w_i` of this micro-batch's sequences, normalised as `renio.normalize` says."""
        r = self.opts
        student, mask = batch.per_row(STUDENT_LOGPROBS)
        teacher, _ = batch.per_row(TEACHER_LOGPROBS)
        batch_mean = totals["renio_weight_sum"] / max(totals["sequences"], 1.0) if r.normalize == "batch" else None
        return renio_sample_weights(student, teacher, mask, ratio_cap=r.ratio_cap, threshold=r.threshold,
                                    tau=r.tau, weight_cap=r.weight_cap, normalize=r.normalize,
                                    batch_mean=batch_mean).float()

    def weights(self, seqs: list[TrainSequence], batch: ScoredBatch, totals: dict) -> tuple[torch.Tensor, float]:
        w = self.sample_weights(batch, totals)
        self._last_weights = w
        combined = torch.tensor([s.sample_weight * float(x) for s, x in zip(seqs, w)], dtype=torch.float32)
        return self.token_weights(batch, totals, combined)

    def extra_metrics(self, per_token, batch, seqs) -> dict:
        w = self._last_weights
        return {"renio/weight_mean": (float(w.sum()), float(len(w)))}


def score_metrics(scores: torch.Tensor, passed: list[bool]) -> dict[str, tuple[float, float]]:
    """ROC AUC of `s_i` for the incorrect rollouts, as Mann-Whitney (U, pairs), and mean scores by outcome.

    Summed over processes, (U, pairs) gives the AUC over the pairs within each process's share.
    """
    incorrect = [not p for p in passed]
    s = scores.double()
    bad = torch.tensor(incorrect, dtype=torch.bool)
    out = {"renio/auc": mann_whitney_u(s.tolist(), incorrect) if len(s) else (0.0, 0.0),
           "renio/score": (float(s.sum()), float(len(s))),
           "renio/score_incorrect": (float(s[bad].sum()), float(bad.sum())),
           "renio/score_correct": (float(s[~bad].sum()), float((~bad).sum()))}
    return out
