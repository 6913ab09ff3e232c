"""Model and tokenizer loading: builtin names, local directories and Hugging Face ids."""

from trajdistill.models.loader import (
    BUILTIN_MODELS,
    load_model,
    load_tokenizer,
    resolve_model_path,
    resolve_device,
    resolve_dtype,
)
from trajdistill.models.tiny import tiny_model

__all__ = [
    "BUILTIN_MODELS",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
    "resolve_device",
    "resolve_dtype",
    "tiny_model",
]
