import copy

import torch

from trajdistill.config import LoraSpec
from trajdistill.models.lora import apply_lora
from trajdistill.train.checkpoint import export_model


def test_export_folds_lora_into_the_weights_like_peft_merge(tmp_path, tiny_lm, tokenizer):
    model = apply_lora(tiny_lm, LoraSpec(r=4, alpha=8))
    with torch.no_grad():  # a trained adapter: B is zero at initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    reference = copy.deepcopy(model).merge_and_unload()
    export_model(model, tokenizer, tmp_path / "final")

    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    ids = torch.tensor([[5, 800, 1200, 31, 77, 4096]])
    expected = reference(input_ids=ids).logits
    torch.testing.assert_close(exported(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    with model.disable_adapter():
        assert not torch.allclose(model(input_ids=ids).logits, expected, atol=1e-3)  # the delta matters
    # the live model keeps its adapter: exporting did not merge in place
    assert any("lora_A" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)  # unmerged sum order
