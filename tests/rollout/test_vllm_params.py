import copy
from types import SimpleNamespace

import torch

from trajdistill.config import LoraSpec
from trajdistill.models.lora import apply_lora
from trajdistill.rollout.sampler import SamplingParams
from trajdistill.rollout.vllm import merged_state_dict, rollouts_from_vllm, vllm_sampling_kwargs


def test_sampling_params_translate_to_vllm_conventions():
    kw = vllm_sampling_kwargs(SamplingParams(n=3, temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=64, seed=7))
    assert kw == {"n": 3, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 64, "seed": 7,
                  "logprobs": 0, "ignore_eos": False, "skip_special_tokens": True}
    assert vllm_sampling_kwargs(SamplingParams(top_k=0))["top_k"] == -1  # vLLM's "disabled"


def test_vllm_outputs_become_rollouts_with_eos_restored():
    step = lambda tok, lp: {tok: SimpleNamespace(logprob=lp)}
    completion = SimpleNamespace(token_ids=[5, 6], text="ab", finish_reason="stop",
                                 logprobs=[step(5, -0.1), step(6, -0.2)])
    cut = SimpleNamespace(token_ids=[7], text="c", finish_reason="length", logprobs=[step(7, -0.3)])
    out = rollouts_from_vllm([SimpleNamespace(outputs=[completion, cut])], [[1, 2]], ["p"], eos_id=2)
    assert out[0].response_ids == [5, 6, 2] and out[0].finished and out[0].logprobs == [-0.1, -0.2, 0.0]
    assert out[1].response_ids == [7] and not out[1].finished and out[1].sample_index == 1


def test_merged_state_dict_equals_merge_and_unload_and_leaves_adapter(tiny_lm):
    model = apply_lora(tiny_lm, LoraSpec(r=4, alpha=8))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a non-zero update
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    got = merged_state_dict(model)
    assert set(got) == set(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])
    assert any("lora_A" in n for n, _ in model.named_parameters())  # adapter still there
