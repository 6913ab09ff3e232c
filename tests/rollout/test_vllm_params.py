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


class RecordingEngine:
    """Stands in for `vllm.LLM`: records the calls the sampler makes, answers one token per prompt."""

    def __init__(self, eos: int):
        self.calls: list[tuple] = []
        self.eos = eos

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags else None))

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def collective_rpc(self, name, kwargs):
        pushed = [n for n, _ in kwargs["weights_iterator"]]  # the stream is consumed inside the engine
        self.calls.append((name, len(pushed)))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(("generate", len(prompts)))
        done = SimpleNamespace(index=0, token_ids=[self.eos], finish_reason="stop", stop_reason=None,
                               logprobs=[{self.eos: SimpleNamespace(logprob=-0.5)}])
        return [SimpleNamespace(outputs=[done]) for _ in prompts]


def sampler_over(engine, model, tokenizer, **options):
    from trajdistill.rollout.vllm import VLLMOptions, VLLMSampler

    sampler = object.__new__(VLLMSampler)  # the engine is the recording one; the logic is the sampler's
    sampler.options, sampler.tokenizer, sampler.model, sampler.progress = VLLMOptions(**options), tokenizer, model, False
    sampler.engine, sampler._vllm = engine, SimpleNamespace(SamplingParams=lambda **kw: kw)
    sampler.sync_seconds, sampler._asleep = [], set()
    sampler._synced = (0, adapter_switches(model))
    return sampler


def test_sleep_mode_drops_weights_after_sampling_and_the_next_sync_pushes_them_before_the_kv_cache(tiny_lm,
                                                                                                tokenizer):
    model = lora_model(tiny_lm)
    engine = RecordingEngine(tokenizer.eos_token_id)
    sampler = sampler_over(engine, model, tokenizer, sleep_mode=True)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=4)
    sampler.sample([[1, 2, 3]], greedy)
    assert engine.calls == [("generate", 1), ("sleep", 2)]
    engine.calls.clear()
    sampler.sync(model, version=0)  # the same version, but the engine dropped its weights asleep
    sampler.sample([[1, 2, 3]], greedy)
    streamed = len(merged_state_dict(model))
    assert engine.calls == [("wake_up", ("weights",)), ("reload_weights", streamed), ("reset_prefix_cache",),
                            ("wake_up", ("kv_cache",)), ("generate", 1), ("sleep", 2)]
    engine.calls.clear()
    sampler.sample([[1, 2, 3]], greedy)  # asleep and never synced since: the weights come back first
    assert engine.calls == [("wake_up", ("weights",)), ("reload_weights", streamed), ("reset_prefix_cache",),
                            ("wake_up", ("kv_cache",)), ("generate", 1), ("sleep", 2)]


def test_without_sleep_mode_a_version_already_pushed_is_not_pushed_again(tiny_lm, tokenizer):
    model = lora_model(tiny_lm)
    engine = RecordingEngine(tokenizer.eos_token_id)
    sampler = sampler_over(engine, model, tokenizer)
    sampler.sync(model, version=0)
    sampler.sync(model, version=1)
    sampler.sync(model, version=1)
    sampler.sync(model)  # no version: always pushed
    assert [c[0] for c in engine.calls].count("reload_weights") == 2
    assert all(c[0] not in ("sleep", "wake_up") for c in engine.calls)
