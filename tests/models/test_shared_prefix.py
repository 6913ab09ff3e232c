"""Prefix-shared scoring gives the row-by-row forward's states, loss and gradients."""

import copy
from pathlib import Path

import pytest
import torch

from trajdistill.config import LoraSpec, load_config
from trajdistill.models.lora import apply_lora
from trajdistill.models.shared_prefix import (PrefixSharing, _right_padded, group_rows, padding, shared_prefix_hidden,
                                              unshared_hidden)
from trajdistill.records import Problem
from trajdistill.teacher import AdapterOffTeacher
from trajdistill.train.batch import TrainSequence, collate

CPU = torch.device("cpu")


def random_rows(seed=0):
    """Three prompts of different lengths (groups of 3, 2 and 1 rows), responses of 1 to 6 tokens."""
    gen = torch.Generator().manual_seed(seed)
    distinct = [torch.randint(10, 2000, (n,), generator=gen).tolist() for n in (7, 12, 4)]
    prompts = [distinct[0], distinct[1], distinct[0], distinct[2], distinct[1], distinct[0]]
    responses = [torch.randint(10, 2000, (n,), generator=gen).tolist() for n in (3, 1, 5, 2, 6, 4)]
    return prompts, responses


def lora_float64(tiny_lm):
    model = apply_lora(tiny_lm.double(), LoraSpec(r=4, alpha=8))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # a student that differs from its base
                param.copy_(0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return model.train()


def grads_of(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


def test_group_rows_keeps_first_appearance_order():
    distinct, group_of = group_rows([[5, 6], [1], [5, 6], [1], [2]])
    assert distinct == [[5, 6], [1], [2]]
    assert group_of == [0, 1, 0, 1, 2]


def test_student_states_loss_and_lora_gradients_equal_the_unshared_forward(tiny_lm):
    model = lora_float64(tiny_lm)
    prompts, responses = random_rows()
    shared = shared_prefix_hidden(model, prompts, responses, CPU)
    plain = unshared_hidden(model, prompts, responses, CPU)
    assert shared.shape == plain.shape == (sum(map(len, responses)), 64)
    torch.testing.assert_close(shared, plain, atol=1e-10, rtol=0)

    head = model.get_output_embeddings().weight
    targets = torch.tensor([t for r in responses for t in r])

    def loss_of(states):  # the mean token NLL through the tied head
        return torch.nn.functional.cross_entropy(states @ head.T, targets)

    shared_loss, plain_loss = loss_of(shared), loss_of(plain)
    torch.testing.assert_close(shared_loss, plain_loss, atol=1e-5, rtol=0)
    shared_grads, plain_grads = grads_of(model, shared_loss), grads_of(model, plain_loss)
    assert len(shared_grads) == 28  # lora_A and lora_B of the 7 linear layers of both blocks
    assert max(float(g.abs().max()) for g in plain_grads) > 1e-3
    for a, b in zip(shared_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_gradients_equal_row_by_row_to_float64_precision_once_rmsnorm_stays_in_float64(tiny_lm, monkeypatch):
    """Why the shared path's float64 gradients differ from the row-by-row ones by ~1e-7 (the states
    are equal to the last bit): HF's RMSNorm computes in float32 whatever the model's dtype, and the
    shared path runs a prompt's backward once on the sum of its rows' gradients where the row-by-row
    path runs it once per row, so the float32 roundings differ. With an RMSNorm that keeps the
    model's dtype the gradients are those of each row run alone, to float64 precision."""
    from transformers.models.llama import modeling_llama

    def rms_norm(self, hidden):
        return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm)
    model = lora_float64(tiny_lm)
    prompts, responses = random_rows()
    head = model.get_output_embeddings().weight
    targets = torch.tensor([t for r in responses for t in r])
    alone = []
    for p, r in zip(prompts, responses):  # each row by itself: no padding, no cache, no sharing
        states = model(input_ids=torch.tensor([p + r]), output_hidden_states=True).hidden_states[-1][0]
        alone.append(states[len(p) - 1 : len(p) + len(r) - 1])
    shared = shared_prefix_hidden(model, prompts, responses, CPU)
    torch.testing.assert_close(shared, torch.cat(alone), atol=1e-12, rtol=0)

    def grads(states):
        return grads_of(model, torch.nn.functional.cross_entropy(states @ head.T, targets))

    for a, b in zip(grads(shared), grads(torch.cat(alone))):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_adapter_off_teacher_scores_the_same_with_and_without_sharing(tiny_lm):
    model = lora_float64(tiny_lm)
    prompts, responses = random_rows(seed=1)
    view = collate([TrainSequence(student_prompt=p, response=r, teacher_prompt=p)
                    for p, r in zip(prompts, responses)], pad_id=0).teacher
    shared = AdapterOffTeacher(model, share_prefix="on").response_hidden(prompts, responses, view)
    plain = AdapterOffTeacher(model, share_prefix="off").response_hidden(prompts, responses, view)
    torch.testing.assert_close(shared, plain, atol=1e-10, rtol=0)
    student = unshared_hidden(model, prompts, responses, CPU).detach()
    assert float((plain - student).abs().max()) > 1e-2  # the adapter really was off


def test_each_distinct_prompt_is_encoded_once(tiny_lm):
    prompts, responses = random_rows()
    seen = []
    tiny_lm.model.embed_tokens.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        shared_prefix_hidden(tiny_lm, prompts, responses, CPU)
    assert seen == [(3, 12), (6, 5)]  # 3 distinct prompts, then 6 responses minus their last token


def test_responses_of_one_token_need_only_the_prompt_pass(tiny_lm):
    prompts, _ = random_rows()
    responses = [[11]] * len(prompts)
    with torch.no_grad():
        torch.testing.assert_close(shared_prefix_hidden(tiny_lm, prompts, responses, CPU),
                                   unshared_hidden(tiny_lm, prompts, responses, CPU), atol=1e-5, rtol=0)


class NoCacheLM(torch.nn.Module):
    """A causal LM whose forward takes no KV cache."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                          use_cache=False)


class PositionBlindLM(torch.nn.Module):
    """Takes a cache and positions but drops the positions: sharing would give wrong states."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, position_ids=None, cache=None, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)

    def get_decoder(self):  # where the final hidden states are read (models.backbone.final_hidden)
        return self.inner.get_decoder()


def test_auto_shares_only_repeated_prompts_on_models_that_pass_the_probe(tiny_lm, capsys):
    prompts, _ = random_rows()
    auto = PrefixSharing("auto", "student")
    assert not auto.use(tiny_lm, [[1, 2], [3, 4]]) and auto.works is None  # nothing repeats: no probe
    assert auto.use(tiny_lm, prompts) and auto.use(tiny_lm, prompts)
    assert capsys.readouterr().err.count("prefix sharing (student): on") == 1  # logged once
    assert not PrefixSharing("off").use(tiny_lm, prompts)
    assert PrefixSharing("on").use(tiny_lm, [[1, 2], [3, 4]])


@pytest.mark.parametrize("wrapper, reason", [(NoCacheLM, "cannot run on an expanded prompt cache"),
                                             (PositionBlindLM, "probe batch gave different states")])
def test_auto_falls_back_to_whole_rows_when_sharing_cannot_work(tiny_lm, capsys, wrapper, reason):
    prompts, _ = random_rows()
    auto = PrefixSharing("auto", "teacher")
    model = wrapper(tiny_lm).train()
    assert not auto.use(model, prompts)
    assert reason in capsys.readouterr().err
    assert model.training and tiny_lm.training  # the probe (in eval mode) restores the training mode


def method_rows(method, tokenizer, problems):
    """Each problem's student and privileged teacher prompts with responses of 1 to 8 tokens."""
    gen = torch.Generator().manual_seed(5)
    seqs = []
    for i, problem in enumerate(problems):
        for j in range(3 if i < 2 else 1):
            response = torch.randint(10, 2000, (1 + (3 * i + 5 * j) % 8,), generator=gen).tolist()
            seqs.append(TrainSequence(student_prompt=method.student_prompt(problem), response=response,
                                      teacher_prompt=method.teacher_prompt(problem), problem_id=problem.id))
    return seqs


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_opsd_loss_and_gradients_are_those_of_the_unshared_path(tmp_path, tiny_lm, tokenizer, divergence):
    from trajdistill.train.run import build

    problems = [Problem(id=f"p{i}", prompt=f"What is {i} + {10 * i + 1}?" + " Think." * i, answer="0",
                        reference=f"{i} + {10 * i + 1} = {11 * i + 1}." + " Check." * (3 - i)) for i in range(3)]
    results = {}
    for mode in ("on", "off"):
        cfg = load_config(Path("configs") / "opsd-forward-kl.yaml",
                          ["lora.r=4", "lora.alpha=8", f"output_dir={tmp_path}", "loss.chunk_size=7",
                           f"loss.divergence={divergence}", f"speed.share_prefix={mode}"])
        ctx, method, _ = build(cfg, tmp_path, model=copy.deepcopy(tiny_lm).double(), tokenizer=tokenizer)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, param in ctx.model.named_parameters():
                if "lora_" in name:  # the same adapter in both runs, and one that changes the student
                    param.copy_(0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
        ctx.model.train()
        seqs = method_rows(method, tokenizer, problems)
        loss, metrics = method.loss(seqs, method.counts(seqs))
        results[mode] = (loss, grads_of(ctx.model, loss), metrics["kl/mean"])
    (loss_on, grads_on, kl_on), (loss_off, grads_off, kl_off) = results["on"], results["off"]
    assert float(loss_off.detach()) > 1e-3
    torch.testing.assert_close(loss_on, loss_off, atol=1e-5, rtol=0)
    assert kl_on[1] == kl_off[1] and abs(kl_on[0] - kl_off[0]) < 1e-5
    for a, b in zip(grads_on, grads_off):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_share_prefix_off_runs_every_row_whole_as_before(tmp_path, tiny_lm, tokenizer):
    from trajdistill.models.backbone import final_hidden
    from trajdistill.train.run import build

    cfg = load_config(Path("configs") / "opsd-forward-kl.yaml",
                      ["lora.r=4", "lora.alpha=8", f"output_dir={tmp_path}", "speed.share_prefix=off"])
    ctx, method, _ = build(cfg, tmp_path, model=tiny_lm, tokenizer=tokenizer)
    problems = [Problem(id=f"p{i}", prompt=f"What is {i} + 1?", answer="0", reference=f"{i + 1}.") for i in range(2)]
    seqs = method_rows(method, tokenizer, problems)
    batch = collate(seqs, ctx.pad_id)
    with torch.no_grad():
        got = method.hidden(seqs, batch)
        s, t = batch.student, batch.teacher
        student = final_hidden(ctx.model, s.input_ids, s.attention_mask)[s.rows, s.cols]
        teacher = ctx.teacher.hidden(t.input_ids, t.attention_mask, t.rows, t.cols)
    assert torch.equal(got.student, student) and torch.equal(got.teacher, teacher)


def test_padding_counts_the_masked_slots_of_the_tensors_each_path_builds():
    prompts = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [7, 8], [7, 8], [9]]
    responses = [[10, 11], [12], [13, 14, 15, 16], [17, 18, 19], [20, 21]]
    _, mask = _right_padded([p + r for p, r in zip(prompts, responses)], 0)
    assert padding(prompts, responses, shared=False) == (int((mask == 0).sum()), mask.numel())
    distinct, _ = group_rows(prompts)
    _, p_mask = _right_padded(distinct, 0)  # what shared_prefix_hidden runs: distinct prompts, then responses
    _, r_mask = _right_padded([r[:-1] for r in responses], 0)
    assert padding(prompts, responses, shared=True) == (int((p_mask == 0).sum() + (r_mask == 0).sum()),
                                                        p_mask.numel() + r_mask.numel())
    assert padding(prompts, responses, shared=True) == ((0 + 3 + 4) + (2 + 3 + 0 + 1 + 2), 3 * 5 + 5 * 3)


def test_ddp_processes_agree_to_share_when_only_one_has_repeated_prompts(tmp_path):
    """DDP broadcasts buffers in every forward: a process taking the unshared path (one forward)
    beside one taking the shared path (two) would pair the collectives wrongly and hang."""
    import json
    import os
    import subprocess
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from shared_ddp import ROWS, lora_model

    script = os.path.join(os.path.dirname(__file__), "shared_ddp.py")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
                    script, str(tmp_path)], check=True, env=env, timeout=300)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0]["shared"] is True and got[1]["shared"] is True
    # the all-reduced gradient is the mean of each process's own, computed here row by row
    model = lora_model()
    for rank in (0, 1):
        unshared_hidden(model, *ROWS[rank], CPU).pow(2).mean().div(2).backward()
    grad = next(p.grad for n, p in model.named_parameters() if "lora_A" in n).flatten()[:8]
    for rank in (0, 1):
        torch.testing.assert_close(torch.tensor(got[rank]["grad"]), grad, rtol=1e-4, atol=1e-6)


def rope_lm(rope: dict | None, *, legacy: bool = False, arch: str = "llama"):
    """A tiny model whose RoPE is `rope` (as `rope_parameters`, or as an old `rope_scaling`) and
    whose original context is 16 positions, so that rows of 20 already cross it."""
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    config_class, model_class = (Phi3Config, Phi3ForCausalLM) if arch == "phi3" else (LlamaConfig, LlamaForCausalLM)
    extra = {} if rope is None else ({"rope_scaling": rope} if legacy else {"rope_parameters": {"rope_theta": 1e4, **rope}})
    if arch == "phi3":  # Phi-3 (longrope) keeps its original context at the top level
        extra.update(original_max_position_embeddings=16, max_position_embeddings=64)
    config = config_class(**{"vocab_size": 2048, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 16,
                             "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **extra})
    torch.manual_seed(0)
    return model_class(config).eval()


LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [3.0] * 8,
            "original_max_position_embeddings": 16}


@pytest.mark.parametrize("rope, legacy, arch, field", [
    ({"rope_type": "dynamic", "factor": 2.0}, False, "llama", "config.rope_parameters.rope_type = 'dynamic'"),
    ({"type": "dynamic", "factor": 2.0}, True, "llama", "rope_type = 'dynamic'"),
    (LONGROPE, False, "llama", "config.rope_parameters.rope_type = 'longrope'"),
    (LONGROPE, False, "phi3", "config.rope_parameters.rope_type = 'longrope'"),
], ids=["llama-dynamic", "llama-dynamic-rope_scaling", "llama-longrope", "phi3-longrope"])
def test_length_dependent_rope_is_refused_from_the_config_which_the_probe_cannot_see(rope, legacy, arch, field, capsys):
    from trajdistill.models.shared_prefix import LengthDependentRope, length_dependent_rope, probe

    model = rope_lm(rope, legacy=legacy, arch=arch)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, 2000, (12,), generator=gen).tolist()
    prompts, responses = [prompt, prompt], [torch.randint(10, 2000, (n,), generator=gen).tolist() for n in (10, 6)]
    # What the check is for: without it the 8-token probe passes, and rows past the original
    # context differ.
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr("trajdistill.models.shared_prefix._refuse_length_dependent_rope", lambda *a, **k: None)
        assert probe(model, prompt)[0]
        shared = shared_prefix_hidden(model, prompts, responses, CPU)
        plain = unshared_hidden(model, prompts, responses, CPU)
    assert float((shared - plain).abs().max()) > 1e-3

    assert field in length_dependent_rope(model)
    auto = PrefixSharing("auto", "teacher")
    assert not auto.use(model, prompts) and not auto.use(model, prompts)
    err = capsys.readouterr().err
    assert err.count("prefix sharing (teacher): off") == 1 and field in err.replace("\n", "")
    with pytest.raises(LengthDependentRope, match=field.replace(".", r"\.").replace("'", ".")):
        PrefixSharing("on", "student").use(model, prompts)
    with pytest.raises(LengthDependentRope, match="share_prefix to auto"):
        shared_prefix_hidden(model, prompts, responses, CPU)


@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 2.0},
                                  {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16}],
                         ids=["default", "linear", "yarn"])
def test_rope_with_fixed_frequencies_still_shares_and_matches_whole_rows(rope):
    from trajdistill.models.shared_prefix import length_dependent_rope

    model = rope_lm(rope)
    assert length_dependent_rope(model) is None
    prompts, responses = random_rows()
    with torch.no_grad():
        torch.testing.assert_close(shared_prefix_hidden(model, prompts, responses, CPU),
                                   unshared_hidden(model, prompts, responses, CPU), atol=1e-4, rtol=1e-4)
    assert PrefixSharing("auto").use(model, prompts) and PrefixSharing("on").use(model, prompts)
