"""OPD and OPSD: the student samples, the teacher scores every position, a divergence per token.

    for each problem x in the step's batch:
        y ~ p_S(. | c_S)                                  (rollout, no grad)
        c_T = c_S (OPD)  or  x + y* + instruction (OPSD)  (teacher context)
        D_t = divergence(p_T(. | c_T, y_<t) || p_S(. | c_S, y_<t))  for t in y
    L = sum_{i,t} w_i u_{i,t} D_t(i) / Z      Z = response tokens (token mean) or sequences

Other on-policy methods (ReNIO, TOPD, TRD) subclass this and override a station: which tokens the
student is trained along, which context the teacher sees, or which weights multiply D_t.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from trajdistill.losses import chunked_divergence_from_hidden, sampled_token_objective
from trajdistill.methods.base import Method, StepResult, TeacherKind
from trajdistill.methods.onpolicy_metrics import divergence_metrics, rollout_metrics
from trajdistill.methods.onpolicy_options import OnPolicyOptions, SettingOptions
from trajdistill.models.backbone import lm_head_weight
from trajdistill.models.buckets import Bucketing, bucketed_final_hidden
from trajdistill.models.shared_prefix import PrefixSharing, padding, shared_prefix_hidden
from trajdistill.records import Problem, Rollout
from trajdistill.rollout import SamplingParams, render_privileged_prompt, render_prompt
from trajdistill.train.batch import Extra, ScoredBatch, TrainSequence, collate

__all__ = ["OPD", "OPSD", "Hidden", "OnPolicyDistillation", "OnPolicyOptions", "SettingOptions",
           "TOKEN_WEIGHTS", "divergence_metrics", "rollout_metrics", "rollout_sequence"]

TOKEN_WEIGHTS: Extra[torch.Tensor] = Extra("token_weights", per="token", dtype=torch.float32, fill=1.0)
"""Per-token weights u_t of a sequence (TOPD's near-future filter); a sequence without them: all 1."""

_DIVERGENCE = {"forward_kl": "forward_kl", "reverse_kl": "reverse_kl", "jsd": "jsd"}


@dataclass
class Hidden:
    student: torch.Tensor  # [N, H], with grad
    teacher: torch.Tensor  # [N, H], no grad
    student_head: torch.Tensor
    teacher_head: torch.Tensor


class OnPolicyDistillation(Method):
    """The on-policy path every on-policy method walks; `OPD` and `OPSD` below are it unchanged."""

    Options = OnPolicyOptions
    needs_sampler = True
    progress_metrics = (("kl", "kl/mean"), ("pass", "rollout/pass_rate"))
    fixed_setting: ClassVar[str | None] = None
    """opd / opsd name their setting; the other methods read it from their options."""
    needs_sampling_logprobs: ClassVar[bool] = False
    """The method uses log-probs of the sampling distribution (its loss temperature must match)."""

    @classmethod
    def setting_of(cls, options) -> str:
        return cls.fixed_setting or options.setting

    @classmethod
    def teacher_kind(cls, options) -> TeacherKind:
        return "separate" if cls.setting_of(options) == "opd" else "self"

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.sampling.temperature == 0.0:
            raise ValueError("field 'sampling.temperature': 0 is greedy; on-policy training needs sampled "
                             "rollouts (> 0)")
        sampled = cfg.loss.divergence == "sampled_token"
        if (sampled or cls.needs_sampling_logprobs) and abs(cfg.loss.temperature - cfg.sampling.temperature) > 1e-9:
            raise ValueError(
                f"field 'loss.temperature': {cfg.loss.temperature} must equal sampling.temperature "
                f"({cfg.sampling.temperature}): the {'sampled-token' if sampled else cfg.method} estimate "
                "uses log-probs of the distribution the tokens were sampled from")

    @property
    def setting(self) -> str:
        return self.setting_of(self.opts)

    # -- station 1: rollouts ------------------------------------------------------------------
    def student_prompt(self, problem: Problem) -> list[int]:
        p = self.cfg.prompt
        return render_prompt(self.ctx.tokenizer, problem, p.instruction, p.system)

    def teacher_prompt(self, problem: Problem) -> list[int]:
        p = self.cfg.prompt
        if self.setting == "opsd":
            return render_privileged_prompt(self.ctx.tokenizer, problem, p.privileged, p.instruction, p.system)
        return self.student_prompt(problem)

    def checked_prompts(self, problem: Problem):
        yield "student prompt", self.student_prompt(problem)
        yield "teacher prompt", self.teacher_prompt(problem)

    def sampling_params(self, step: int) -> SamplingParams:
        s = self.cfg.sampling
        return SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              max_new_tokens=s.max_new_tokens, seed=self.cfg.seed * 100_003 + step * 7919
                              + self.ctx.rank)

    def rollouts(self, problems: list[Problem], step: int) -> list[Rollout]:
        """n responses per problem: the student's, except the off-policy share (GKD's mixing)."""
        params = self.sampling_params(step)
        off = self._off_policy_slots(problems, step)
        if not off:
            prompts = [self.student_prompt(p) for p in problems]
            rollouts = self.ctx.sampler.sample(prompts, params, [p.id for p in problems])
        else:
            rollouts = self._mixed_rollouts(problems, params, off)
        by_id = {p.id: p for p in problems}
        verdicts = self.ctx.verifier.check_many([by_id[r.problem_id] for r in rollouts], [r.text for r in rollouts])
        for r, verdict in zip(rollouts, verdicts):
            r.verdict = verdict
        return rollouts

    def _off_policy_slots(self, problems: list[Problem], step: int) -> set[tuple[int, int]]:
        """(problem index, sample index) of the responses that do not come from the student."""
        frac = self.opts.off_policy_fraction
        if frac <= 0:
            return set()
        gen = torch.Generator().manual_seed(self.cfg.seed * 31 + step)
        needs_reference = self.opts.off_policy_source == "reference"
        slots = set()
        for i, problem in enumerate(problems):
            for j in range(self.cfg.sampling.n):
                if torch.rand((), generator=gen).item() < frac and (problem.reference or not needs_reference):
                    slots.add((i, j))
        return slots

    def _mixed_rollouts(self, problems: list[Problem], params: SamplingParams,
                        off: set[tuple[int, int]]) -> list[Rollout]:
        """Samples only the student's share; the rest are references or the teacher's samples,
        trained on as if the student had written them (student prompt, no sampler log-probs)."""
        slots = [(i, j) for i in range(len(problems)) for j in range(self.cfg.sampling.n)]
        student_slots = [s for s in slots if s not in off]
        off_slots = [s for s in slots if s in off]
        one = dataclasses.replace(params, n=1)
        made = dict(zip(student_slots, self.ctx.sampler.sample(
            [self.student_prompt(problems[i]) for i, _ in student_slots], one,
            [problems[i].id for i, _ in student_slots])))
        if self.opts.off_policy_source == "teacher":
            teacher_params = dataclasses.replace(one, seed=(params.seed or 0) + 77_777)
            made.update(zip(off_slots, self.sample_teacher(
                [self.teacher_prompt(problems[i]) for i, _ in off_slots], teacher_params,
                [problems[i].id for i, _ in off_slots])))
        else:
            tok = self.ctx.tokenizer
            for i, j in off_slots:
                ref = problems[i].reference
                made[(i, j)] = Rollout(problems[i].id, [], tok(ref, add_special_tokens=False)["input_ids"]
                                       + [tok.eos_token_id], ref)
        for (i, j), r in made.items():
            r.sample_index = j
            if (i, j) in off:
                r.prompt_ids, r.logprobs, r.off_policy = self.student_prompt(problems[i]), None, True
        return [made[s] for s in slots]

    def sample_teacher(self, prompts: list[list[int]], params: SamplingParams,
                       ids: list[str] | None = None) -> list[Rollout]:
        """Samples from the teacher under `prompts` (OPSD: the student's base, adapter disabled),
        through the trainer's teacher sampler (the same backend as the student's)."""
        return self.ctx.teacher_sampler.sample(prompts, params, ids)

    def keep(self, rollout: Rollout) -> bool:
        """Outcome filter (ReNIO's controlled experiment): all, incorrect or correct only; and,
        with `drop_truncated`, only rollouts that ended before the token budget."""
        if self.opts.drop_truncated and not rollout.finished:
            return False
        mode = self.opts.outcome_filter
        passed = bool(rollout.verdict and rollout.verdict.passed)
        return mode == "all" or (mode == "correct") == passed

    def collect(self, problems: list[Problem], step: int) -> StepResult:
        rollouts = self.rollouts(problems, step)
        teacher_prompts = {p.id: self.teacher_prompt(p) for p in problems}
        seqs = [rollout_sequence(r, teacher_prompts[r.problem_id]) for r in rollouts
                if r.response_ids and self.keep(r)]
        return StepResult(seqs, rollout_metrics(rollouts, len(seqs)), rollouts)

    # -- stations 2-5: teacher scores, weights, loss --------------------------------------------
    def hidden(self, seqs: list[TrainSequence], batch: ScoredBatch) -> Hidden:
        """Student states with gradient; the teacher's from each sequence's cache when every
        sequence has one (methods that score the whole step first), else computed now."""
        model, device = self.ctx.model, self.ctx.device
        states = self.student_hidden(seqs, batch)
        if all(q.teacher_hidden is not None for q in seqs):
            teacher_states = torch.cat([q.teacher_hidden for q in seqs]).to(device)
        else:
            teacher_states = self.ctx.teacher.response_hidden(
                [q.teacher_prompt for q in seqs], [q.teacher_response or q.response for q in seqs], batch.teacher)
        return Hidden(states, teacher_states, lm_head_weight(model), self.ctx.teacher.head_weight())

    def student_hidden(self, seqs: list[TrainSequence], batch: ScoredBatch) -> torch.Tensor:
        """The student's final states `[N, H]` at the positions predicting each response token
        (with gradient when enabled); each distinct student prompt encoded once when
        `speed.share_prefix` allows."""
        model, s, device = self.ctx.model, batch.student, self.ctx.device
        prompts = [q.student_prompt for q in seqs]
        if self.prefix_sharing.use(model, prompts):
            return shared_prefix_hidden(model, prompts, [q.response for q in seqs], device, self.ctx.pad_id,
                                        bucketing=self.bucketing)
        return bucketed_final_hidden(model, s.input_ids, s.attention_mask, s.rows, s.cols, self.bucketing, device)

    @functools.cached_property
    def prefix_sharing(self) -> PrefixSharing:
        return PrefixSharing(self.cfg.speed.share_prefix, "student")

    @functools.cached_property
    def bucketing(self) -> Bucketing:
        return Bucketing(self.cfg.speed.bucketing, self.cfg.speed.bucket_cost, "student")

    def weights(self, seqs: list[TrainSequence], batch: ScoredBatch, totals: dict) -> tuple[torch.Tensor, float]:
        """The one weighting hook: per-token weights `w_i u_t` and the normaliser Z (token mean or
        sequence mean over the optimisation batch). ReNIO replaces `w_i`, TOPD `u_t` and Z."""
        return self.token_weights(batch, totals)

    def token_weights(self, batch: ScoredBatch, totals: dict, sample_weights: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, float]:
        device = self.ctx.device
        idx = batch.seq_index.to(device)
        w = (batch.sample_weights if sample_weights is None else sample_weights).to(device)[idx]
        token_weights = TOKEN_WEIGHTS.of(batch)
        if token_weights is not None:
            w = w * token_weights.to(device)
        if self.cfg.loss.aggregation == "sequence":
            w = w / batch.lengths.to(device)[idx].float()
            return w, float(totals["sequences"])
        return w, float(totals["tokens"])

    def divergence(self, hidden: Hidden, targets, weights, normalizer, observe=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(loss, per_token)`; `observe` sees each chunk's logits (the full-vocabulary losses only)."""
        spec = self.cfg.loss
        if spec.divergence == "sampled_token":
            return sampled_token_objective(hidden.student, hidden.student_head, hidden.teacher, hidden.teacher_head,
                                           targets, weights, normalizer, temperature=spec.temperature,
                                           chunk_size=spec.chunk_size)
        return chunked_divergence_from_hidden(
            hidden.student, hidden.student_head,
            teacher_hidden=hidden.teacher, teacher_head_weight=hidden.teacher_head,
            divergence=_DIVERGENCE[spec.divergence], beta=spec.beta, temperature=spec.temperature,
            vocab_clip=spec.vocab_clip, token_clip=spec.token_clip, top_k=spec.top_k,
            tail_bucket=spec.tail_bucket, token_weights=weights, normalizer=normalizer,
            chunk_size=spec.chunk_size, observe=observe,
        )

    def loss(self, seqs: list[TrainSequence], totals: dict) -> tuple[torch.Tensor, dict]:
        """The one on-policy loss: L = sum_{i,t} w_i u_t D_t(i) / Z."""
        batch = collate(seqs, self.ctx.pad_id)
        hidden = self.hidden(seqs, batch)
        weights, normalizer = self.weights(seqs, batch, totals)
        observer = self.diagnostics_observer(batch)
        loss, per_token = self.divergence(hidden, batch.targets.to(hidden.student.device), weights, normalizer,
                                          observer)
        metrics = self.divergence_metrics(per_token.detach().float().cpu(), batch)
        prompts = [q.student_prompt for q in seqs]
        metrics["batch/padding"] = padding(prompts, [q.response for q in seqs],
                                           self.prefix_sharing.use(self.ctx.model, prompts), self.bucketing)
        metrics.update(self.diagnostics(hidden, batch, observer))
        metrics.update(self.extra_metrics(per_token.detach().float().cpu(), batch, seqs))
        return loss, metrics

    def divergence_metrics(self, per_token: torch.Tensor, batch: ScoredBatch) -> dict:
        """`kl/mean`, `kl/correct`, `kl/incorrect` over the batch's tokens."""
        return divergence_metrics(per_token, batch)

    def extra_metrics(self, per_token: torch.Tensor, batch: ScoredBatch, seqs: list[TrainSequence]) -> dict:
        """Method-specific per-step metrics as (sum, count) pairs; none here."""
        return {}

    def diagnostics_observer(self, batch: ScoredBatch):
        """The observer that gathers the diagnostics from the loss's own vocabulary pass (None when
        they are off or the loss makes no full-vocabulary pass)."""
        if not self.opts.diagnostics or self.cfg.loss.divergence == "sampled_token":
            return None
        from trajdistill.eval.diagnostics import StatisticsObserver, epistemic_token_ids

        return StatisticsObserver(batch.targets, epistemic_token_ids(self.ctx.tokenizer))

    def diagnostics(self, hidden: Hidden, batch: ScoredBatch, observer=None) -> dict[str, tuple[float, float]]:
        """The TRD paper's training diagnostics (appendix C.5), `diag/*`: teacher mass on epistemic onset tokens,
        teacher/student NLL and their gap on the response mask (switch: `diagnostics`); from
        `observer` when the loss fed it, else from a pass of their own."""
        if not self.opts.diagnostics:
            return {}
        from trajdistill.eval.diagnostics import diagnostic_sums, training_diagnostics

        if observer is not None:
            return diagnostic_sums(observer.stats())
        return training_diagnostics(hidden, batch.targets, self.ctx.tokenizer, self.cfg.loss.chunk_size)

    def counts(self, seqs: list[TrainSequence]) -> dict[str, float]:
        """Same keys on every process (the trainer all-reduces them)."""
        return {"tokens": float(sum(len(s.response) for s in seqs)), "sequences": float(len(seqs))}


class OPD(OnPolicyDistillation):
    """`method: opd`: a separate frozen teacher (`teacher:`) scores under the student's prompt."""

    fixed_setting = "opd"


class OPSD(OnPolicyDistillation):
    """`method: opsd`: the student's own base, shown the reference solution, is the teacher."""

    fixed_setting = "opsd"


def rollout_sequence(rollout: Rollout, teacher_prompt: list[int]) -> TrainSequence:
    """The training unit of one rollout."""
    return TrainSequence(student_prompt=rollout.prompt_ids, response=rollout.response_ids,
                         teacher_prompt=teacher_prompt, passed=rollout.verdict.passed,
                         problem_id=rollout.problem_id, finished=rollout.finished)
