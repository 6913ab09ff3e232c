"""The vLLM backend's plain parts (no engine): parameter translation, output conversion, weights."""

import copy
from types import SimpleNamespace

import pytest
import torch

from trajdistill.config import LoraSpec
from trajdistill.models.lora import apply_lora
from trajdistill.rollout.sampler import SamplingParams
from trajdistill.rollout.vllm import engine_logprobs_exact, rollouts_from_vllm, vllm_sampling_kwargs
from trajdistill.rollout.weights import adapter_switches, iter_merged_weights, merged_state_dict


def test_sampling_params_translate_to_vllm_conventions():
    kw = vllm_sampling_kwargs(SamplingParams(n=3, temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=64, seed=7))
    assert kw == {"n": 3, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 64, "seed": 7,
                  "logprobs": 0, "ignore_eos": False, "detokenize": False}
    assert vllm_sampling_kwargs(SamplingParams(top_k=0))["top_k"] == 0  # disabled in vLLM too
    assert vllm_sampling_kwargs(SamplingParams(), logprobs=False)["logprobs"] is None


def test_vllm_logprobs_are_exact_only_without_truncation():
    assert engine_logprobs_exact(SamplingParams(temperature=0.7, top_k=0, top_p=1.0))
    assert engine_logprobs_exact(SamplingParams(temperature=0.0, top_k=20, top_p=0.9))  # greedy ignores both
    assert not engine_logprobs_exact(SamplingParams(temperature=0.7, top_k=20, top_p=1.0))
    assert not engine_logprobs_exact(SamplingParams(temperature=0.7, top_k=0, top_p=0.95))


def test_vllm_outputs_become_rollouts_with_eos_kept_once(tokenizer):
    eos = tokenizer.eos_token_id
    step = lambda tok, lp: {tok: SimpleNamespace(logprob=lp)}
    stopped = SimpleNamespace(index=0, token_ids=[5, 6, eos], finish_reason="stop", stop_reason=None,
                              logprobs=[step(5, -0.1), step(6, -0.2), step(eos, -0.3)])
    cut = SimpleNamespace(index=1, token_ids=[7], finish_reason="length", stop_reason=None, logprobs=[step(7, -0.4)])
    out = rollouts_from_vllm([SimpleNamespace(outputs=[cut, stopped])], [[1, 2]], ["p"], tokenizer)
    assert out[0].response_ids == [5, 6, eos] and out[0].finished and out[0].logprobs == [-0.1, -0.2, -0.3]
    assert out[0].text == tokenizer.decode([5, 6], skip_special_tokens=True)
    assert out[1].response_ids == [7] and not out[1].finished and out[1].sample_index == 1
    without = rollouts_from_vllm([SimpleNamespace(outputs=[cut])], [[1, 2]], ["p"], tokenizer, with_logprobs=False)
    assert without[0].logprobs is None
    no_eos = SimpleNamespace(index=0, token_ids=[5], finish_reason="stop", stop_reason="x", logprobs=None)
    with pytest.raises(RuntimeError, match="without EOS"):
        rollouts_from_vllm([SimpleNamespace(outputs=[no_eos])], [[1]], ["p"], tokenizer)


def lora_model(tiny_lm):
    model = apply_lora(tiny_lm, LoraSpec(r=4, alpha=8))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a non-zero update
    return model


def test_merged_state_dict_equals_merge_and_unload_and_leaves_the_model_bit_identical(tiny_lm):
    model = lora_model(tiny_lm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    got = merged_state_dict(model)
    assert set(got) == set(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_merged_state_dict_unwraps_ddp_and_skips_a_disabled_adapter(tiny_lm):
    model = lora_model(tiny_lm)
    wrapped = torch.nn.Module()
    wrapped.module = model
    plain = model.get_base_model()
    with model.disable_adapter():
        got = merged_state_dict(wrapped)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(got[key], plain.model.layers[0].self_attn.q_proj.base_layer.weight)
    assert not torch.equal(merged_state_dict(wrapped)[key], got[key])


def test_merged_weights_stream_one_tensor_at_a_time_and_tied_names_share_one(tiny_lm):
    model = lora_model(tiny_lm)
    base = model.get_base_model()
    assert base.config.tie_word_embeddings
    names = [name for name, _ in iter_merged_weights(model)]
    assert len(names) == len(set(names)) == len(merged_state_dict(model))
    stream = iter_merged_weights(model)
    seen = {}
    for name, tensor in stream:  # a generator: nothing is gathered before it is asked for
        seen[name] = tensor
    assert seen["lm_head.weight"] is seen["model.embed_tokens.weight"]
    head = names.index("lm_head.weight")
    assert names[head - 1] == "model.embed_tokens.weight" or names[head + 1] == "model.embed_tokens.weight"


def test_adapter_switches_follow_disabling_and_merging(tiny_lm):
    model = lora_model(tiny_lm)
    on = adapter_switches(model)
    assert any(active for _, active in on)
    with model.disable_adapter():
        assert adapter_switches(model) != on
    model.merge_adapter()
    assert adapter_switches(model) != on  # merged: the base weights carry the update now
    model.unmerge_adapter()
    assert adapter_switches(model) == on
