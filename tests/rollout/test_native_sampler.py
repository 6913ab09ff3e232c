"""The native decoding loop against HF `generate` (float64, tiny model): the same greedy outputs, the
same tokens from the same per-row seeds, the warped distribution when sampling, exact log-probs."""

import collections
import logging

import pytest
import torch

from trajdistill.records import Problem
from trajdistill.rollout import SamplingParams, make_sampler, render_prompt


@pytest.fixture()
def stopping_lm(tokenizer):
    """A float64 tiny model that often ends its answers: EOS's output row copies (x1.02) that of the
    token its greedy decoding picks most, so rows stop at different steps and leave the batch."""
    from trajdistill.models import tiny_model

    model = tiny_model(tokenizer, seed=0, tie_word_embeddings=False).double()
    prompts = _prompts(tokenizer)
    out = make_sampler("hf", model, tokenizer, progress=False).sample(
        prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=12, stop_at_eos=False))
    common = collections.Counter(t for r in out for t in r.response_ids[1:]).most_common(1)[0][0]
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[tokenizer.eos_token_id] = head[common] * 1.02
    return model


def _prompts(tokenizer):
    texts = ["What is 2 + 2?", "Name a prime number larger than ten, please.", "Hi", "Add 17 and 25, then halve it."]
    return [render_prompt(tokenizer, Problem(id=str(i), prompt=t), "Answer in \\boxed{}.") for i, t in enumerate(texts)]


def _both(model, tokenizer, params, batch_size=64):
    prompts = _prompts(tokenizer)
    hf = make_sampler("hf", model, tokenizer, batch_size=batch_size, progress=False).sample(prompts, params)
    native = make_sampler("native", model, tokenizer, batch_size=batch_size, progress=False).sample(prompts, params)
    return hf, native


def _assert_same(hf, native):
    assert [(r.problem_id, r.sample_index) for r in native] == [(r.problem_id, r.sample_index) for r in hf]
    assert [r.response_ids for r in native] == [r.response_ids for r in hf]
    assert [r.finished for r in native] == [r.finished for r in hf]
    assert [r.text for r in native] == [r.text for r in hf]
    for a, b in zip(native, hf):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)  # both record float32


@pytest.mark.parametrize("batch_size", [64, 3])
def test_greedy_outputs_equal_hf_generate_with_rows_ending_at_different_steps(stopping_lm, tokenizer, batch_size):
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=12)
    hf, native = _both(stopping_lm, tokenizer, params, batch_size)
    lengths = {len(r.response_ids) for r in hf}
    assert len(lengths) > 1 and any(r.finished for r in hf)  # the compaction path ran
    _assert_same(hf, native)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 5, 0.9), (1.0, 0, 1.0), (1.3, 0, 0.8), (0.6, 20, 0.95)])
def test_seeded_samples_are_hfs_tokens_for_the_same_row_seeds(stopping_lm, tokenizer, temperature, top_k, top_p):
    params = SamplingParams(n=3, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=10,
                            prompt_seeds=(11, 200, 3000, 40000))
    hf, native = _both(stopping_lm, tokenizer, params, batch_size=5)
    assert len({tuple(r.response_ids) for r in hf}) > 6  # samples differ
    _assert_same(hf, native)


def test_sample_frequencies_follow_the_warped_distribution(tokenizer):
    from trajdistill.models import tiny_model

    model = tiny_model(tokenizer, seed=1).double()
    prompt = _prompts(tokenizer)[0]
    params = SamplingParams(n=3000, temperature=0.8, top_k=6, top_p=0.9, max_new_tokens=1, seed=5)
    out = make_sampler("native", model, tokenizer, batch_size=4096, progress=False).sample([prompt], params)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1] / 0.8
    values, index = logits.topk(6)
    probs = torch.softmax(values, -1)
    keep = (torch.cumsum(probs, -1) - probs) < 0.9
    expected = torch.zeros_like(probs)
    expected[keep] = torch.softmax(values[keep], -1)
    assert 2 <= int(keep.sum()) <= 5  # both filters bite
    counts = collections.Counter(r.response_ids[0] for r in out)
    assert set(counts) <= set(index[keep].tolist())
    for token, p in zip(index.tolist(), expected.tolist()):
        freq = counts.get(token, 0) / len(out)
        assert abs(freq - p) <= 4 * (p * (1 - p) / len(out)) ** 0.5 + 1e-9, (token, freq, p)


def test_unseeded_sampling_is_reproducible_from_the_seed_and_logprobs_match_a_forward(stopping_lm, tokenizer):
    prompts = _prompts(tokenizer)
    sampler = make_sampler("native", stopping_lm, tokenizer, batch_size=4, progress=False)
    params = SamplingParams(n=2, temperature=0.7, top_k=8, max_new_tokens=8, seed=3)
    a, b = sampler.sample(prompts, params), sampler.sample(prompts, params)
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert [r.response_ids for r in a] != [r.response_ids for r in sampler.sample(prompts, SamplingParams(
        n=2, temperature=0.7, top_k=8, max_new_tokens=8, seed=4))]
    for r in a:
        with torch.no_grad():
            logits = stopping_lm(torch.tensor([r.prompt_ids + r.response_ids])).logits[0, len(r.prompt_ids) - 1 : -1]
        expected = torch.log_softmax(logits / 0.7, -1).gather(1, torch.tensor(r.response_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(r.logprobs), expected.float(), atol=1e-5, rtol=1e-5)


def test_lora_model_and_teacher_context_decode_as_hf(stopping_lm, tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(stopping_lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    entered = []

    def adapter_off():
        entered.append(1)
        return model.disable_adapter()

    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=8)
    prompts = _prompts(tokenizer)
    for context in (None, adapter_off):
        hf = make_sampler("hf", model, tokenizer, progress=False, context=context).sample(prompts, params)
        native = make_sampler("native", model, tokenizer, progress=False, context=context).sample(prompts, params)
        _assert_same(hf, native)
    assert entered == [1, 1]
    with torch.no_grad():
        on = make_sampler("native", model, tokenizer, progress=False).sample(prompts, params)
    assert [r.response_ids for r in on] != [r.response_ids for r in native]  # the adapter was really off


def test_a_model_without_a_kv_cache_argument_falls_back_to_hf_generate(tiny_lm, tokenizer, caplog):
    class NoCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    sampler = make_sampler("native", NoCache(tiny_lm), tokenizer, progress=False)
    sampler.model.generate = lambda **kw: tiny_lm.generate(**kw)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=4)
    with caplog.at_level(logging.INFO):
        out = sampler.sample(_prompts(tokenizer), params)
    assert "sampling with HF generate" in caplog.text
    expected = make_sampler("hf", tiny_lm, tokenizer, progress=False).sample(_prompts(tokenizer), params)
    assert [r.response_ids for r in out] == [r.response_ids for r in expected]


def test_repeated_prompts_are_encoded_once_and_sample_as_hf(stopping_lm, tokenizer, monkeypatch):
    from trajdistill.rollout.native import NativeSampler

    a, b = _prompts(tokenizer)[:2]
    prompts = [a, b, a, a, b]
    params = SamplingParams(n=1, temperature=0.9, top_k=10, max_new_tokens=8, prompt_seeds=(1, 2, 3, 4, 5))
    hf = make_sampler("hf", stopping_lm, tokenizer, progress=False).sample(prompts, params)
    native = make_sampler("native", stopping_lm, tokenizer, progress=False)
    encoded = []
    prefill = NativeSampler._prefill
    monkeypatch.setattr(NativeSampler, "_prefill", lambda self, ps, cache: encoded.append(len(ps)) or prefill(self, ps, cache))
    _assert_same(hf, native.sample(prompts, params))
    assert encoded == [2]
