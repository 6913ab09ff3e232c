"""On-policy methods that look at the whole step's teacher scores before the update (ReNIO, TOPD).

ReNIO needs every rollout's sampled-token log-ratio to normalise its sample weights over the
optimisation batch; TOPD needs every response token's divergence to pick the step's high-loss
quantile. Both are computed in `collect`, without gradient. The teacher is frozen, so the hidden
states it gives in `collect` are exactly those the loss would recompute: they are kept on each
`TrainSequence` (`teacher_hidden`, `[len(response), H]`, on the teacher's device, in its weights'
dtype: a bf16 model's states are bf16 values, so nothing is lost against the fp32 the teacher
returns, and nothing travels to the host and back) and the loss runs only the student.
"""

from __future__ import annotations

import torch

from trajdistill.methods.onpolicy import Hidden, OnPolicyDistillation
from trajdistill.models.backbone import base_causal_lm, lm_head_weight
from trajdistill.train.batch import TrainSequence, collate
from trajdistill.losses.logprobs import token_logprobs
from trajdistill.train.lockstep import lockstep_micro_batches


def padded(rows: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors into `[B, T]` plus the `[B, T]` bool mask of real entries."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), fill, dtype=torch.float64)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.double()
        mask[i, : len(r)] = True
    return out, mask


class StepScoredDistillation(OnPolicyDistillation):
    def _chunks(self, seqs: list[TrainSequence]):
        """`(chunk, counts)` per `micro_batch_size` sequences; with several processes, as many chunks
        on every process (fillers, `counts` False, whose results are dropped), since under FSDP every
        forward gathers the sharded weights (see `lockstep_micro_batches`)."""
        for chunk, counts in lockstep_micro_batches(seqs, self.cfg.optim.micro_batch_size, self.ctx.device):
            if chunk:
                yield chunk, counts

    def _cached_dtype(self, states: torch.Tensor) -> torch.dtype:
        """The teacher weights' dtype when it is narrower than `states` (bf16 states come back as
        fp32 from the teacher), else `states`'. Read from the head's parameter, which needs no
        gather under FSDP."""
        head = getattr(getattr(self.ctx.teacher, "model", None), "get_output_embeddings", None)
        if head is None:
            return states.dtype
        weights = base_causal_lm(self.ctx.teacher.model).get_output_embeddings().weight.dtype
        return weights if weights.itemsize < states.dtype.itemsize else states.dtype

    @torch.no_grad()
    def cache_teacher_hidden(self, seqs: list[TrainSequence]) -> None:
        """Score the teacher once per sequence; the loss (`hidden`) reuses it."""
        todo = [s for s in seqs if s.teacher_hidden is None]
        for chunk, counts in self._chunks(todo):
            t = collate(chunk, self.ctx.pad_id).teacher
            states = self.ctx.teacher.response_hidden([s.teacher_prompt for s in chunk],
                                                      [s.teacher_response or s.response for s in chunk], t)
            states = states.to(self._cached_dtype(states))
            for seq, h in zip(chunk, states.split([len(s.response) for s in chunk])):
                if counts:
                    seq.teacher_hidden = h

    @torch.no_grad()
    def teacher_token_logprobs(self, seqs: list[TrainSequence], temperature: float) -> list[torch.Tensor]:
        """`log p_T(y_t)` of each response token at `temperature` (teacher states from the cache)."""
        self.cache_teacher_hidden(seqs)
        head = self.ctx.teacher.head_weight()
        chunk = self.cfg.loss.chunk_size
        return [token_logprobs(s.teacher_hidden.to(head.device), head,
                               torch.tensor(s.response, device=head.device), temperature=temperature,
                               chunk_size=chunk).cpu()
                for s in seqs]

    @torch.no_grad()
    def student_token_logprobs(self, seqs: list[TrainSequence], temperature: float) -> list[torch.Tensor]:
        """`log p_S(y_t)` at `temperature` from a forward pass (when the sampler's are unavailable)."""
        out: list[torch.Tensor] = []
        for chunk, counts in self._chunks(seqs):
            batch = collate(chunk, self.ctx.pad_id)
            device = self.ctx.device
            lp = token_logprobs(self.student_hidden(chunk, batch), lm_head_weight(self.ctx.model).detach(),
                                batch.targets.to(device), temperature=temperature,
                                chunk_size=self.cfg.loss.chunk_size).cpu()
            if counts:
                out += list(lp.split(batch.lengths.tolist()))
        return out

    @torch.no_grad()
    def step_divergences(self, seqs: list[TrainSequence]) -> list[torch.Tensor]:
        """`D_t` of every response token with the configured divergence, no gradient: `[len]` per sequence."""
        self.cache_teacher_hidden(seqs)
        out: list[torch.Tensor] = []
        for chunk, counts in self._chunks(seqs):
            batch = collate(chunk, self.ctx.pad_id)
            h = self.hidden(chunk, batch)
            h = Hidden(h.student.detach(), h.teacher, h.student_head.detach(), h.teacher_head)
            ones = torch.ones(batch.num_tokens, device=h.student.device)
            _, per_token = self.divergence(h, batch.targets.to(h.student.device), ones, 1.0)
            if counts:
                out += list(per_token.detach().float().cpu().split(batch.lengths.tolist()))
        return out
