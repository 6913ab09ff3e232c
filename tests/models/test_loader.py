import time

import pytest
import torch

from trajdistill import UserError
from trajdistill.models import load_model, load_tokenizer, resolve_model_path, tiny_model


def test_missing_local_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope"))


def test_directory_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_hub_ids_pass_through_unchanged():
    assert resolve_model_path("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_tokenizer_has_chat_template_pad_and_left_padding(tokenizer):
    assert tokenizer.chat_template
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
    assert tokenizer.padding_side == "left"


def test_tiny_model_matches_tokenizer_vocabulary(tokenizer):
    model = tiny_model(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_local_directory_loads_through_the_same_loader(tiny_model_dir, tokenizer):
    model = load_model(tiny_model_dir, device="cpu")
    assert model.config.vocab_size == len(tokenizer)
    assert load_tokenizer(tiny_model_dir).get_vocab() == tokenizer.get_vocab()


@pytest.mark.slow
def test_builtin_smollm2_loads_from_cache_quickly_and_answers():
    resolve_model_path("smollm2-135m-instruct")  # converts once if needed
    started = time.perf_counter()
    model = load_model("smollm2-135m-instruct", device="cpu")
    assert time.perf_counter() - started < 5.0
    tok = load_tokenizer("smollm2-135m-instruct")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert "4" in tok.decode(out[0, len(ids):])
    assert not hasattr(model.config, "quantization_config")
