"""Training diagnostics of the TRD paper (appendix C.5), usable by every on-policy method.

All are computed over the response tokens of a training batch and returned as (sum, count)
pairs, so the trainer adds them up over micro-batches and processes before dividing: the logged
value is a token-weighted mean over the step, as in the paper.

- KL by outcome: `sum_{t in bucket} D_t / |bucket|` for each outcome label of the rollout
  (the stage-1 verdict in the paper; any labelling here, e.g. TRD's joint fail->pass labels).
- Teacher mass on epistemic onset tokens: `m_t = sum_{v in E} p_T(v | c_T, y_<t)` at temperature
  1 (before any KL temperature), where E holds the first sub-token id of each phrase in
  `EPISTEMIC_PHRASES`, bare and with a leading space, deduplicated.
- Teacher-student perplexity gap on the same mask: `log PPL_S - log PPL_T
  = mean_t (log p_T(y_t | c_T, y_<t) - log p_S(y_t | c_S, y_<t))`. Positive: the teacher finds the
  trained tokens likelier than the student does (there is something left to transmit). The two
  mean NLLs are logged too (`exp` of them are the perplexities).
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from trajdistill.losses.logprobs import token_logprobs

EPISTEMIC_PHRASES = ("Wait", "Actually", "However", "Alternatively", "Oops", "Wrong", "Error",
                     "Incorrect", "Correction", "Sorry", "Hmm", "Oh", "Hold", "Pause", "Uh", "Um")

Sums = dict[str, tuple[float, float]]


@functools.lru_cache(maxsize=8)
def epistemic_token_ids(tokenizer, phrases: tuple[str, ...] = EPISTEMIC_PHRASES) -> tuple[int, ...]:
    """First sub-token id of every phrase, bare and with a leading space, deduplicated, sorted."""
    ids = set()
    for phrase in phrases:
        for variant in (phrase, " " + phrase):
            encoded = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if encoded:
                ids.add(int(encoded[0]))
    return tuple(sorted(ids))


def kl_by_outcome(per_token: torch.Tensor, seq_index: torch.Tensor, labels: Sequence[str | None],
                  prefix: str = "kl") -> Sums:
    """Per-token divergence summed within each label's tokens: `{prefix/label: (sum, count)}`.

    `labels[b]` names sequence b's bucket (None: counted in no bucket).
    """
    per_token = per_token.detach().float().cpu()
    seq_index = seq_index.cpu()
    out: Sums = {}
    for label in sorted({lb for lb in labels if lb is not None}):
        rows = torch.tensor([lb == label for lb in labels])[seq_index]
        out[f"{prefix}/{label}"] = (float(per_token[rows].sum()), float(rows.sum()))
    return out


@torch.no_grad()
def token_statistics(student_hidden: torch.Tensor, student_head: torch.Tensor,
                     teacher_hidden: torch.Tensor, teacher_head: torch.Tensor, targets: torch.Tensor,
                     epistemic_ids: Sequence[int], chunk_size: int = 512) -> dict[str, torch.Tensor]:
    """Per response token: student and teacher log-prob of the token, teacher mass on E ([N] each)."""
    student_lp = token_logprobs(student_hidden, student_head, targets.to(student_hidden.device),
                                chunk_size=chunk_size)
    targets = targets.to(teacher_hidden.device)
    teacher_lp = token_logprobs(teacher_hidden, teacher_head, targets, chunk_size=chunk_size)
    ids = torch.tensor(list(epistemic_ids), dtype=torch.long, device=teacher_hidden.device)
    # m_t = exp(logsumexp_{v in E} z_v - log Z) with log Z = z_y - log p_T(y): only the |E| head rows
    # are needed, not a second pass over the vocabulary (an empty E gives logsumexp = -inf, m_t = 0)
    hidden, head = teacher_hidden.float(), teacher_head.float()
    log_norm = (hidden * head[targets]).sum(-1) - teacher_lp
    mass = torch.exp(torch.logsumexp(hidden @ head[ids].T, dim=-1) - log_norm)
    return {"student_logprob": student_lp.float().cpu(), "teacher_logprob": teacher_lp.float().cpu(),
            "epistemic_mass": mass.float().cpu()}


class StatisticsObserver:
    """`token_statistics` gathered from a loss's own vocabulary pass: pass it as the `observe`
    argument of `chunked_divergence_from_hidden` (rows in its selected-row order), then read
    `stats()`. Saves the two extra `[N, V]` head products and softmaxes of a separate pass."""

    def __init__(self, targets: torch.Tensor, epistemic_ids: Sequence[int]):
        self.targets = targets
        self.ids = torch.tensor(list(epistemic_ids), dtype=torch.long, device=targets.device)
        n = targets.shape[0]
        self.student_lp, self.teacher_lp, self.mass = (torch.zeros(n, dtype=torch.float64) for _ in range(3))
        self.seen = torch.zeros(n, dtype=torch.bool)

    @torch.no_grad()
    def __call__(self, start: int, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        rows = slice(start, start + student_logits.shape[0])
        t = self.targets[rows].to(student_logits.device)[:, None]
        self.student_lp[rows] = (student_logits.gather(1, t).squeeze(1)
                                 - torch.logsumexp(student_logits, dim=-1)).double().cpu()
        teacher = teacher_logits.float()
        log_norm = torch.logsumexp(teacher, dim=-1)
        self.teacher_lp[rows] = (teacher.gather(1, t.to(teacher.device)).squeeze(1) - log_norm).double().cpu()
        picked = teacher[:, self.ids.to(teacher.device)]
        self.mass[rows] = torch.exp(torch.logsumexp(picked, dim=-1) - log_norm).double().cpu()
        self.seen[rows] = True

    def stats(self) -> dict[str, torch.Tensor]:
        if not bool(self.seen.all()):
            raise RuntimeError("the loss did not pass every row to the statistics observer")
        return {"student_logprob": self.student_lp, "teacher_logprob": self.teacher_lp, "epistemic_mass": self.mass}


def diagnostic_sums(stats: dict[str, torch.Tensor], prefix: str = "diag") -> Sums:
    """Token sums of the C.5 quantities from `token_statistics` output."""
    n = float(stats["student_logprob"].numel())
    s, t = stats["student_logprob"].double(), stats["teacher_logprob"].double()
    return {
        f"{prefix}/teacher_epistemic_mass": (float(stats["epistemic_mass"].double().sum()), n),
        f"{prefix}/student_nll": (float(-s.sum()), n),
        f"{prefix}/teacher_nll": (float(-t.sum()), n),
        f"{prefix}/log_ppl_gap": (float((t - s).sum()), n),
    }


def training_diagnostics(hidden, targets: torch.Tensor, tokenizer, chunk_size: int = 512) -> Sums:
    """The C.5 diagnostics of one micro-batch from the on-policy `Hidden` views (no gradient)."""
    stats = token_statistics(hidden.student, hidden.student_head, hidden.teacher, hidden.teacher_head,
                             targets, epistemic_token_ids(tokenizer), chunk_size)
    return diagnostic_sums(stats)


def perplexity(mean_nll: float) -> float:
    """`exp` of a logged mean NLL (e.g. `diag/teacher_nll`)."""
    return float(torch.tensor(mean_nll).exp())
