"""Shared fixtures: the real SmolLM2 tokenizer (converted once and cached) and tiny random models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models are dominated by per-op overhead: one thread is several times faster than two
# (OpenMP threads spin), and tests that launch processes then get the other core.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from trajdistill.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture()
def tiny_lm(tokenizer):
    from trajdistill.models import tiny_model

    return tiny_model(tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny model saved as a plain Hugging Face directory (usable as `model.name`)."""
    from trajdistill.models import tiny_model

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer):
    from trajdistill.models import tiny_model

    path = tmp_path_factory.mktemp("tiny-teacher")
    teacher = tiny_model(tokenizer, seed=0)  # the student's weights plus noise: a related teacher
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    teacher.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
