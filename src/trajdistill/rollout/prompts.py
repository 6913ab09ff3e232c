"""Turn problems into chat-templated prompt token ids (student and privileged teacher contexts)."""

from __future__ import annotations

from trajdistill import UserError
from trajdistill.records import Problem


def _as_ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return list(encoded)


def chat_ids(tokenizer, user_text: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat ending with the assistant's generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"tokenizer {tokenizer.name_or_path} has no chat template")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_text}
    ]
    return _as_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def render_prompt(tokenizer, problem: Problem, instruction: str = "", system: str | None = None) -> list[int]:
    """Student context c_S: the problem followed by the answer-format instruction."""
    text = f"{problem.prompt}\n\n{instruction}".strip() if instruction else problem.prompt
    return chat_ids(tokenizer, text, system)


def render_privileged_prompt(
    tokenizer, problem: Problem, template: str, instruction: str = "", system: str | None = None
) -> list[int]:
    """OPSD teacher context c_T: problem + reference solution + a transition instruction."""
    if not problem.reference:
        raise UserError(f"problem {problem.id} ({problem.source}) has no reference solution for the teacher")
    text = template.format(problem=problem.prompt, reference=problem.reference, instruction=instruction)
    return chat_ids(tokenizer, text.strip(), system)
