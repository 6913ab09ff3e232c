"""The rows of the offline methods as token ids, and the summed log-probs of their completions.

A prompt is rendered with the model's chat template (a string is the user turn, a message list is
used as is); a completion ends with EOS, so the student learns to stop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from trajdistill import UserError
from trajdistill.losses.logprobs import per_sequence_sum, token_logprobs
from trajdistill.models.backbone import final_hidden, lm_head_weight
from trajdistill.rollout.prompts import _as_ids, chat_ids
from trajdistill.train.batch import TrainSequence, collate


@dataclass
class Example:
    """One SFT row, tokenised: templated prompt ids and completion ids ending with EOS."""

    prompt: list[int]
    completion: list[int]


@dataclass
class Pair:
    """One preference row, tokenised; `ref_*` are DPO's cached reference log-probs (summed)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def key(self) -> str:
        blob = json.dumps([self.prompt, self.chosen, self.rejected]).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


def prompt_ids(tokenizer, prompt: Any, system: str | None) -> list[int]:
    """A string is the user turn; a list of messages (conversational format) is used as is."""
    if isinstance(prompt, str):
        return chat_ids(tokenizer, prompt, system)
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return _as_ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
    raise UserError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}")


def completion_ids(tokenizer, completion: Any) -> list[int]:
    """Completion text (or assistant messages) followed by EOS: the student must learn to stop."""
    if isinstance(completion, list):
        completion = "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")
    if not isinstance(completion, str):
        raise UserError(f"completion must be a string or a list of chat messages, got {type(completion).__name__}")
    return tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def sequence_logps(model, pad_id: int, prompts: list[list[int]], responses: list[list[int]], device,
                   chunk_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs [B] and response lengths [B] (grad flows if enabled)."""
    batch = collate([TrainSequence(student_prompt=p, response=r) for p, r in zip(prompts, responses)], pad_id)
    s = batch.student
    states = final_hidden(model, s.input_ids.to(device), s.attention_mask.to(device))
    hidden = states[s.rows.to(device), s.cols.to(device)]
    logps = token_logprobs(hidden, lm_head_weight(model), batch.targets.to(device), chunk_size=chunk_size)
    sums = per_sequence_sum(logps, batch.seq_index.to(device), len(prompts))
    return sums, batch.lengths.to(device)
