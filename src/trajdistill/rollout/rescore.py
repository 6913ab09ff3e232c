"""Sampler log-probs from one forward pass of the student over prompt + response.

For engines that cannot report `log p(y_t)` under the full distribution at temperature T (vLLM
reports it after top-k/top-p truncation), this gives the same numbers as the HF sampler's recorder.
"""

from __future__ import annotations

from typing import Sequence

import torch

from trajdistill.models.backbone import final_hidden, lm_head_weight
from trajdistill.records import Rollout
from trajdistill.losses.logprobs import token_logprobs


@torch.no_grad()
def response_logprobs(model, rollouts: Sequence[Rollout], temperature: float, *, batch_size: int = 8,
                      pad_id: int = 0) -> list[list[float]]:
    """`log softmax(logits / T)[y_t]` for every response token of every rollout (T = 0 means 1).

    Rows are right-padded, so every sequence has positions 0..L-1 as during generation.
    """
    model = getattr(model, "module", model)  # DDP: no gradient hooks for a scoring pass
    temperature = temperature if temperature > 0 else 1.0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    try:
        for start in range(0, len(rollouts), batch_size):
            chunk = rollouts[start : start + batch_size]
            width = max(len(r.prompt_ids) + len(r.response_ids) for r in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, r in enumerate(chunk):
                seq = list(r.prompt_ids) + list(r.response_ids)
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            hidden = final_hidden(model, ids.to(device), mask.to(device))
            rows = torch.cat([torch.full((len(r.response_ids),), i) for i, r in enumerate(chunk)]).long()
            # the state at position t predicts token t + 1
            cols = torch.cat([torch.arange(len(r.prompt_ids) - 1, len(r.prompt_ids) + len(r.response_ids) - 1)
                              for r in chunk]).long()
            targets = ids[rows, cols + 1]
            lp = token_logprobs(hidden[rows.to(device), cols.to(device)], lm_head_weight(model),
                                targets.to(device), temperature=temperature).float().cpu()
            out += [piece.tolist() for piece in lp.split([len(r.response_ids) for r in chunk])]
    finally:
        model.train(was_training)
    return out
