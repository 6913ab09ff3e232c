"""The vLLM sampler against the HF reference, on one real engine (run in the vLLM env: make test-vllm)."""

from __future__ import annotations

import copy
import importlib.util
import time

import pytest
import torch

from trajdistill.config import LoraSpec
from trajdistill.models import tiny_model
from trajdistill.models.lora import apply_lora
from trajdistill.rollout.hf import HFSampler
from trajdistill.rollout.sampler import SamplingParams

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (make vllm-env builds an env that has it)")

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Count to five:", "The capital of France is"]


def small_model(tokenizer):
    # head_dim 64: vLLM's CPU attention has no kernel for the default tiny model's head_dim of 16
    return tiny_model(tokenizer, seed=0, heads=1)


class Wrapped(torch.nn.Module):
    """Stands in for DDP: the trained model sits under `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module = module


@pytest.fixture(scope="module")
def student(tokenizer):
    return apply_lora(small_model(tokenizer), LoraSpec(r=4, alpha=8))


@pytest.fixture(scope="module")
def engine(student, tokenizer):
    from trajdistill.rollout.vllm import VLLMSampler

    sampler = VLLMSampler(student, tokenizer, dtype="float32", max_model_len=512, kv_cache_gb=1,
                          rescore_logprobs=True)
    yield sampler
    sampler.close()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def forward_logprobs(model, rollout, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) of the response tokens, straight from the model's logits."""
    ids = torch.tensor([rollout.prompt_ids + rollout.response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    start = len(rollout.prompt_ids)
    scores = torch.log_softmax(logits[start - 1 : -1] / temperature, dim=-1)
    return scores.gather(1, torch.tensor(rollout.response_ids)[:, None]).squeeze(1)


def train_one_step(model, tokenizer, prompts):
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    batch = torch.tensor([prompts[0] * 3])
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optim.step()
    optim.zero_grad()
    model.eval()


def test_vllm_greedy_after_a_lora_step_and_sync_equals_hf_greedy(engine, student, tokenizer, prompts):
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=24)
    hf = HFSampler(student, tokenizer, progress=False)
    before = [r.response_ids for r in hf.sample(prompts, greedy)]
    engine.sync(Wrapped(student))
    assert [r.response_ids for r in engine.sample(prompts, greedy)] == before

    train_one_step(student, tokenizer, prompts)
    after = [r.response_ids for r in hf.sample(prompts, greedy)]
    assert after != before  # the step changed what the model says
    assert [r.response_ids for r in engine.sample(prompts, greedy)] == before  # not synced yet

    engine.sync(Wrapped(student))
    assert [r.response_ids for r in engine.sample(prompts, greedy)] == after
    assert any("lora_A" in n for n, _ in student.named_parameters())  # sync left the adapter in place


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (20, 0.9)], ids=["full", "top_k_top_p"])
def test_vllm_logprobs_are_full_vocabulary_logprobs_at_the_sampling_temperature(engine, student, prompts,
                                                                                 top_k, top_p):
    engine.sync(student)
    params = SamplingParams(n=2, temperature=0.7, top_k=top_k, top_p=top_p, max_new_tokens=24, seed=3)
    rollouts = engine.sample(prompts, params)
    assert len(rollouts) == len(prompts) * 2
    worst = 0.0
    for r in rollouts:
        assert r.logprobs is not None and len(r.logprobs) == len(r.response_ids)
        expected = forward_logprobs(student, r, 0.7)
        worst = max(worst, float((torch.tensor(r.logprobs) - expected).abs().max()))
    assert worst < 1e-4


def test_vllm_greedy_logprobs_are_temperature_one_logprobs(engine, student, prompts):
    engine.sync(student)
    for r in engine.sample(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=16)):
        torch.testing.assert_close(torch.tensor(r.logprobs), forward_logprobs(student, r, 1.0), atol=1e-4, rtol=0)


def test_vllm_samples_are_seeded_and_distinct_across_n(engine, student, prompts):
    engine.sync(student)
    params = SamplingParams(n=4, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12, seed=11)
    first = [r.response_ids for r in engine.sample(prompts, params)]
    assert first == [r.response_ids for r in engine.sample(prompts, params)]
    assert len({tuple(ids) for ids in first}) == len(first)
    twice = [r for r in engine.sample([prompts[0], prompts[0]], params)]
    assert twice[0].response_ids != twice[4].response_ids  # the same prompt twice: other samples
    assert [r.sample_index for r in twice] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_vllm_keeps_eos_once_when_the_model_stops(engine, tokenizer, prompts):
    model = small_model(tokenizer)
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # a large EOS row in the (tied) head: EOS wins whenever h . e_eos > 0
        head = model.get_output_embeddings().weight
        head[eos] = 10.0 * torch.randn(head.shape[1], generator=torch.Generator().manual_seed(0))
    engine.sync(model)
    rollouts = engine.sample(prompts, SamplingParams(n=4, temperature=1.0, top_k=0, top_p=1.0,
                                                     max_new_tokens=12, seed=0))
    finished = [r for r in rollouts if r.finished]
    assert finished  # the large EOS row makes some samples stop
    for r in rollouts:
        if r.finished:
            assert r.response_ids[-1] == eos and r.response_ids.count(eos) == 1
            assert len(r.logprobs) == len(r.response_ids)
        else:
            assert len(r.response_ids) == 12 and eos not in r.response_ids
    hf = HFSampler(model, tokenizer, progress=False).sample(prompts, SamplingParams(n=1, temperature=0.0,
                                                                                   max_new_tokens=12))
    vl = engine.sample(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=12))
    assert [(r.response_ids, r.finished, r.text) for r in vl] == [(r.response_ids, r.finished, r.text) for r in hf]


def test_vllm_engine_starts_once_and_pushes_only_a_new_weights_version(engine, student, tokenizer, prompts,
                                                                       record_property):
    started_engine = engine.engine
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    engine.sync(student, version=7)
    count = len(engine.sync_seconds)
    began = time.perf_counter()
    engine.sync(student, version=7)  # the same version: nothing pushed, no pass over the weights
    skipped = time.perf_counter() - began
    assert len(engine.sync_seconds) == count

    changed = copy.deepcopy(student)
    with torch.no_grad():
        for name, p in changed.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    engine.sync(changed, version=8)
    assert len(engine.sync_seconds) == count + 1
    assert engine.engine is started_engine
    assert engine.sync_seconds[-1] < engine.start_seconds
    expected = HFSampler(changed, tokenizer, progress=False).sample(prompts, greedy)
    assert [r.response_ids for r in engine.sample(prompts, greedy)] == [r.response_ids for r in expected]

    with changed.disable_adapter():  # a switch of the adapter is a change too, at any version
        engine.sync(changed, version=8)
        assert len(engine.sync_seconds) == count + 2
        base = HFSampler(changed, tokenizer, progress=False).sample(prompts, greedy)
        assert [r.response_ids for r in engine.sample(prompts, greedy)] == [r.response_ids for r in base]
    record_property("engine_start_s", round(engine.start_seconds, 2))
    record_property("sync_s", round(engine.sync_seconds[-1], 3))
    record_property("skipped_sync_s", round(skipped, 4))
    print(f"engine start {engine.start_seconds:.1f}s, sync {engine.sync_seconds[-1] * 1000:.0f}ms, "
          f"same-version sync {skipped * 1000:.2f}ms")


def test_vllm_seeded_sampling_of_more_prompt_tokens_than_one_step_takes(engine, student, tokenizer):
    """Seeded requests whose prompts overflow one scheduler step: on CPU a prefill split across
    steps crashed the engine (its generators cannot rewind), so the sampler schedules whole prompts."""
    engine.sync(student)
    budget = engine.engine.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    prompt = tokenizer("one two three four five six seven eight nine ten " * 9)["input_ids"][:90]
    prompts = [[7 + i] + prompt for i in range(budget // len(prompt) + 4)]
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=3, seed=5)
    rollouts = engine.sample(prompts, params)
    assert len(rollouts) == 2 * len(prompts) and all(len(r.response_ids) == 3 for r in rollouts)
    assert [r.response_ids for r in engine.sample(prompts, params)] == [r.response_ids for r in rollouts]


def test_vllm_without_rescoring_gives_no_logprobs_where_its_own_are_truncated(engine, student, prompts):
    from dataclasses import replace

    engine.sync(student)
    kept = engine.options
    engine.options = replace(kept, rescore_logprobs=False)  # the default
    try:
        truncated = engine.sample(prompts, SamplingParams(n=1, temperature=0.7, top_k=20, max_new_tokens=6, seed=1))
        full = engine.sample(prompts, SamplingParams(n=1, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=6,
                                                     seed=1))
    finally:
        engine.options = kept
    assert all(r.logprobs is None for r in truncated)  # never renormalised ones passed off as exact
    assert all(r.logprobs is not None and len(r.logprobs) == len(r.response_ids) for r in full)


# Last: after the child-process engine, the module's in-process engine above fails with "pipeline
# model parallel group is not initialized" (vLLM's process-wide state); engines started later work.
def test_vllm_engine_in_a_child_process_syncs_through_a_file(tokenizer, prompts):
    from trajdistill.rollout.vllm import VLLMSampler

    first, second = small_model(tokenizer), tiny_model(tokenizer, seed=1, heads=1)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=16)
    sampler = VLLMSampler(first, tokenizer, dtype="float32", max_model_len=512, kv_cache_gb=1, multiprocess=True)
    try:
        expected = [r.response_ids for r in HFSampler(second, tokenizer, progress=False).sample(prompts, greedy)]
        assert [r.response_ids for r in sampler.sample(prompts, greedy)] != expected
        sampler.sync(second)
        assert [r.response_ids for r in sampler.sample(prompts, greedy)] == expected
        print(f"child-process engine start {sampler.start_seconds:.1f}s, sync {sampler.sync_seconds[-1] * 1000:.0f}ms")
    finally:
        sampler.close()
    assert not sampler._dir.exists()
