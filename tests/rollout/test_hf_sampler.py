import json
import os
import subprocess
import sys

import pytest
import torch

from trajdistill.records import Problem
from trajdistill.rollout import SamplingParams, make_sampler, render_privileged_prompt, render_prompt


def _prompts(tokenizer):
    problems = [Problem(id=f"p{i}", prompt=f"What is {i} + {i}?", reference=f"{i}+{i}={2*i}") for i in range(3)]
    return problems, [render_prompt(tokenizer, p, "Answer in \\boxed{}.") for p in problems]


def test_returns_n_rollouts_per_prompt_in_input_order(tiny_lm, tokenizer):
    problems, prompts = _prompts(tokenizer)
    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=4, progress=False)
    out = sampler.sample(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=0), [p.id for p in problems])
    assert [r.problem_id for r in out] == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert [r.sample_index for r in out] == [0, 1] * 3
    for r in out:
        assert r.prompt_ids == prompts[int(r.problem_id[1])]
        assert 1 <= len(r.response_ids) <= 6
        assert r.finished == (r.response_ids[-1] == tokenizer.eos_token_id)


def test_logprobs_equal_a_fresh_forward_at_the_sampling_temperature(tiny_lm, tokenizer):
    _, prompts = _prompts(tokenizer)
    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=3, progress=False)
    out = sampler.sample(prompts, SamplingParams(n=1, temperature=0.7, top_k=5, max_new_tokens=5, seed=1))
    for r in out:
        ids = torch.tensor([r.prompt_ids + r.response_ids])
        with torch.no_grad():
            logits = tiny_lm(ids).logits[0, len(r.prompt_ids) - 1 : -1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(r.response_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(r.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_same_seed_same_samples_and_greedy_is_deterministic(tiny_lm, tokenizer):
    _, prompts = _prompts(tokenizer)
    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=2, progress=False)
    a = sampler.sample(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=3))
    b = sampler.sample(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=3))
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    g1 = sampler.sample(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=5))
    g2 = sampler.sample(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=5))
    assert [r.response_ids for r in g1] == [r.response_ids for r in g2]


def test_left_padding_does_not_change_a_prompts_greedy_continuation(tiny_lm, tokenizer):
    _, prompts = _prompts(tokenizer)
    long_prompt = prompts[0] + prompts[1]
    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=2, progress=False)
    alone = sampler.sample([prompts[0]], SamplingParams(n=1, temperature=0.0, max_new_tokens=5))
    batched = sampler.sample([prompts[0], long_prompt], SamplingParams(n=1, temperature=0.0, max_new_tokens=5))
    assert alone[0].response_ids == batched[0].response_ids


def test_privileged_prompt_contains_reference_and_problem(tokenizer):
    p = Problem(id="x", prompt="What is 2 + 3?", reference="2 + 3 = 5, so \\boxed{5}.")
    text = tokenizer.decode(render_privileged_prompt(tokenizer, p, "{problem}\nRef: {reference}\n{instruction}", "Go."))
    assert "What is 2 + 3?" in text and "\\boxed{5}" in text and "Go." in text
    assert text.rstrip().endswith("assistant")


def test_seeded_rows_do_not_depend_on_their_batch(tiny_lm, tokenizer):
    problems, prompts = _prompts(tokenizer)
    params = SamplingParams(n=3, temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=8, prompt_seeds=(11, 22, 33))
    together = make_sampler("hf", tiny_lm, tokenizer, batch_size=9, progress=False).sample(prompts, params)
    for i, prompt in enumerate(prompts):
        alone = make_sampler("hf", tiny_lm, tokenizer, batch_size=2, progress=False).sample(
            [prompt], SamplingParams(**{**params.__dict__, "prompt_seeds": (params.prompt_seeds[i],)}))
        assert [r.response_ids for r in alone] == [r.response_ids for r in together[3 * i: 3 * i + 3]]
    assert len({tuple(r.response_ids) for r in together[:3]}) > 1  # the n samples differ


def test_seeded_rows_sample_the_same_distribution_as_hf_generate(tiny_lm, tokenizer):
    # First-token frequencies over many samples: per-row generators vs HF's own sampling.
    _, prompts = _prompts(tokenizer)
    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=400, progress=False)
    base = dict(n=400, temperature=1.3, top_k=8, top_p=0.95, max_new_tokens=1)
    ours = sampler.sample(prompts[:1], SamplingParams(**base, prompt_seeds=(5,)))
    theirs = sampler.sample(prompts[:1], SamplingParams(**base, seed=5))
    with torch.no_grad():
        logits = tiny_lm(input_ids=torch.tensor([prompts[0]])).logits[0, -1] / 1.3
    top = torch.topk(logits, 8)
    probs = torch.softmax(top.values, dim=-1)  # top-p 0.95 on 8 tokens: recomputed below
    keep = torch.cumsum(probs, 0) - probs < 0.95
    probs = torch.where(keep, probs, torch.zeros_like(probs))
    probs = probs / probs.sum()
    for rollouts in (ours, theirs):
        counts = torch.zeros(len(probs))
        for r in rollouts:
            hits = (top.indices == r.response_ids[0]).nonzero()
            assert len(hits) == 1, "a token outside the top-k/top-p set was sampled"
            counts[hits[0, 0]] += 1
        # each frequency within 4 binomial standard errors of the exact probability
        se = torch.sqrt(probs * (1 - probs) / len(rollouts))
        assert torch.all((counts / len(rollouts) - probs).abs() <= 4 * se + 1e-9), (counts, probs)


@pytest.mark.slow
def test_fsdp_sharded_generation_with_uneven_work_per_process_matches_the_full_model(tmp_path):
    """Sharded weights are gathered layer by layer in every forward, collectively: a process with
    fewer or shorter generations must keep stepping until the others finish (else a deadlock)."""
    script = os.path.join(os.path.dirname(__file__), "hf_sharded.py")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([sys.executable, script, str(tmp_path / "one")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29543",
                    script, str(tmp_path / "two")], check=True, env=env, timeout=300)
    for rank, (count, tokens) in enumerate([(3, 6), (1, 11)]):
        one, two = (json.loads((tmp_path / d / f"rank{rank}.json").read_text()) for d in ("one", "two"))
        assert [len(r) for r in one] == [tokens] * count
        assert two == one  # greedy: the sharded model generates the full model's tokens


def _model_with_shipped_sampling_defaults(tokenizer):
    """The fixture's weights, with a `generation_config` such as a checkpoint's
    `generation_config.json` brings (Qwen2.5-Instruct: repetition_penalty 1.05, top_k 20, ...)."""
    from transformers import GenerationConfig

    from trajdistill.models import tiny_model

    model = tiny_model(tokenizer, seed=0)
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=0.3, top_k=5, top_p=0.5, typical_p=0.9, min_p=0.05, repetition_penalty=1.5,
        no_repeat_ngram_size=2, min_new_tokens=4, suppress_tokens=[5, 6], begin_suppress_tokens=[7],
        bad_words_ids=[[8]], eos_token_id=[tokenizer.eos_token_id, 9], pad_token_id=tokenizer.pad_token_id)
    return model


@pytest.mark.parametrize("params", [
    SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=0),
    SamplingParams(n=2, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=8, seed=4),
    SamplingParams(n=2, temperature=0.7, max_new_tokens=8, prompt_seeds=(1, 2, 3)),
    SamplingParams(n=1, temperature=0.0, max_new_tokens=8),
    SamplingParams(n=1, temperature=1.0, max_new_tokens=8, seed=2, stop_at_eos=False),
], ids=["seed", "seed-topk-topp", "row-seeds", "greedy", "no-eos"])
def test_a_models_own_generation_config_changes_neither_samples_nor_logprobs(tiny_lm, tokenizer, params):
    _, prompts = _prompts(tokenizer)
    shipped = _model_with_shipped_sampling_defaults(tokenizer)
    own = shipped.generation_config
    plain = make_sampler("hf", tiny_lm, tokenizer, batch_size=4, progress=False).sample(prompts, params)
    ours = make_sampler("hf", shipped, tokenizer, batch_size=4, progress=False).sample(prompts, params)
    assert shipped.generation_config is own and own.repetition_penalty == 1.5  # restored after the call
    assert [r.response_ids for r in ours] == [r.response_ids for r in plain]
    assert [r.logprobs for r in ours] == [r.logprobs for r in plain]
    if not params.stop_at_eos:
        assert all(len(r.response_ids) == params.max_new_tokens for r in ours)
    temperature = params.temperature or 1.0
    for r in ours:  # the recorded log-probs are the raw model's at the sampling temperature
        with torch.no_grad():
            logits = tiny_lm(torch.tensor([r.prompt_ids + r.response_ids])).logits[0, len(r.prompt_ids) - 1: -1]
        expected = torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(r.response_ids)[:, None])
        torch.testing.assert_close(torch.tensor(r.logprobs), expected.squeeze(1), atol=1e-4, rtol=1e-4)


def test_a_lora_wrapped_models_generation_config_does_not_leak_either(tiny_lm, tokenizer):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    base = _model_with_shipped_sampling_defaults(tokenizer)
    torch.manual_seed(0)
    plain = get_peft_model(tiny_lm, lora)
    torch.manual_seed(0)  # the same adapter weights
    shipped = get_peft_model(base, lora)
    own = shipped.base_model.model.generation_config
    _, prompts = _prompts(tokenizer)
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=6, seed=1)
    a = make_sampler("hf", plain, tokenizer, batch_size=4, progress=False).sample(prompts, params)
    b = make_sampler("hf", shipped, tokenizer, batch_size=4, progress=False).sample(prompts, params)
    assert [(r.response_ids, r.logprobs) for r in b] == [(r.response_ids, r.logprobs) for r in a]
    assert shipped.base_model.model.generation_config is own
