"""Checks run before any training step; each failure is one line naming what to fix."""

from __future__ import annotations

from trajdistill import UserError


def check_tokenizer(tokenizer, role: str) -> None:
    name = getattr(tokenizer, "name_or_path", role)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{role} tokenizer {name} has no chat template")
    if tokenizer.eos_token_id is None:
        raise UserError(f"{role} tokenizer {name} has no EOS token")
    if tokenizer.pad_token_id is None:
        raise UserError(f"{role} tokenizer {name} has no pad token")
    if tokenizer.eos_token_id >= len(tokenizer) or tokenizer.pad_token_id >= len(tokenizer):
        raise UserError(f"{role} tokenizer {name}: EOS/pad id outside the vocabulary")


def check_same_vocabulary(student_tok, teacher_tok, student_model, teacher_model) -> None:
    """Per-token divergences compare distributions over one shared vocabulary."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise UserError(
            f"teacher tokenizer {teacher_tok.name_or_path} differs from the student's "
            f"{student_tok.name_or_path}: OPD needs an identical vocabulary"
        )
    s = student_model.get_output_embeddings().weight.shape[0]
    t = teacher_model.get_output_embeddings().weight.shape[0]
    if s != t:
        raise UserError(f"teacher LM head has {t} rows, the student's {s}: vocabularies must match")


def check_prompt_lengths(named_prompts, limit: int) -> None:
    """Every (problem id, what, token ids) prompt must fit; the first that does not is reported."""
    too_long = [(pid, what, len(ids)) for pid, what, ids in named_prompts if len(ids) > limit]
    if too_long:
        pid, what, n = too_long[0]
        raise UserError(
            f"{what} of problem {pid} has {n} tokens > sampling.max_prompt_tokens={limit} "
            f"({len(too_long)} prompts too long): raise the limit or drop those problems"
        )
