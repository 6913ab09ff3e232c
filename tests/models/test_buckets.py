"""Length bucketing: the optimal split, and the same states, loss and gradients as one padded forward."""

import copy
import itertools
from pathlib import Path

import pytest
import torch

from trajdistill.config import load_config
from trajdistill.models.backbone import final_hidden
from trajdistill.models.buckets import Bucketing, bucketed_states, length_buckets
from trajdistill.models.shared_prefix import _right_padded, padding, shared_prefix_hidden, unshared_hidden
from trajdistill.records import Problem
from trajdistill.train.batch import TrainSequence, collate

from tests.models.test_shared_prefix import grads_of, lora_float64

CPU = torch.device("cpu")


def cost_of(groups, lengths, cost):
    return sum(len(g) * max(lengths[i] for i in g) + cost for g in groups)


def set_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]
        yield [[first]] + part


@pytest.mark.parametrize("cost", [0, 3, 10, 1000])
def test_the_split_is_the_cheapest_of_every_partition(cost):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = 1 + trial % 6
        lengths = torch.randint(1, 30, (n,), generator=gen).tolist()
        groups = length_buckets(lengths, cost)
        assert sorted(i for g in groups for i in g) == list(range(n))
        best = min(cost_of(p, lengths, cost) for p in set_partitions(list(range(n))))
        assert cost_of(groups, lengths, cost) == best


def test_no_cost_gives_one_group_per_length_and_a_huge_cost_one_group():
    lengths = [5, 9, 5, 2, 9]
    assert length_buckets(lengths, 0) == [[3], [0, 2], [1, 4]]
    assert length_buckets(lengths, 10**6) == [[3, 0, 2, 1, 4]]
    assert Bucketing("auto", 10**6).groups(lengths) is None  # one group: the plain forward
    assert Bucketing("off", 0).groups(lengths) is None
    assert Bucketing("auto", 0).groups(lengths) == [[3], [0, 2], [1, 4]]


def rows_of(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 2000, (n,), generator=gen).tolist() for n in lengths]


def test_grouped_states_and_lora_gradients_equal_one_padded_forward(tiny_lm):
    model = lora_float64(tiny_lm)
    prompts = rows_of([7, 3, 12, 4, 9])
    responses = rows_of([2, 14, 1, 6, 3], seed=1)
    view = collate([TrainSequence(student_prompt=p, response=r) for p, r in zip(prompts, responses)], pad_id=0).student

    def run(ids, mask):
        return final_hidden(model, ids, mask)

    groups = length_buckets(view.attention_mask.sum(-1).tolist(), cost=0)
    assert len(groups) == 5
    plain = bucketed_states(run, view.input_ids, view.attention_mask, view.rows, view.cols, None)
    grouped = bucketed_states(run, view.input_ids, view.attention_mask, view.rows, view.cols, groups)
    torch.testing.assert_close(grouped, plain, atol=1e-10, rtol=0)
    weights = torch.randn(plain.shape, generator=torch.Generator().manual_seed(2), dtype=plain.dtype)
    for a, b in zip(grads_of(model, (grouped * weights).sum()), grads_of(model, (plain * weights).sum())):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_shared_prefix_response_groups_give_the_unshared_states_and_gradients(tiny_lm):
    model = lora_float64(tiny_lm)
    distinct = rows_of([7, 12, 4])
    prompts = [distinct[g] for g in (0, 1, 0, 2, 1, 0, 2)]
    responses = rows_of([3, 1, 15, 2, 9, 4, 1], seed=3)  # one-token responses feed nothing
    bucketing = Bucketing("auto", cost=0)
    assert len(bucketing.groups([len(r) - 1 for r in responses])) > 2
    grouped = shared_prefix_hidden(model, prompts, responses, CPU, bucketing=bucketing)
    shared = shared_prefix_hidden(model, prompts, responses, CPU)
    plain = unshared_hidden(model, prompts, responses, CPU)
    torch.testing.assert_close(grouped, plain, atol=1e-10, rtol=0)
    weights = torch.randn(plain.shape, generator=torch.Generator().manual_seed(4), dtype=plain.dtype)
    grads = [grads_of(model, (states * weights).sum()) for states in (grouped, shared, plain)]
    for a, b, c in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)  # grouping the responses changes nothing
        # against whole rows, sharing's own tolerance: its backward differs from whole rows' by
        # about 1e-7 relative here (the states are equal), grouped or not
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("share", ["on", "off"])
def test_opsd_loss_and_gradients_do_not_depend_on_bucketing(tmp_path, tiny_lm, tokenizer, share):
    from trajdistill.train.run import build

    problems = [Problem(id=f"p{i}", prompt=f"What is {i} + {10 * i + 1}?" + " Think." * (2 * i), answer="0",
                        reference=f"{i} + {10 * i + 1} = {11 * i + 1}." + " Check." * (5 - 2 * i)) for i in range(3)]
    gen = torch.Generator().manual_seed(6)
    lengths = [1, 12, 3, 20, 2, 7]
    results = {}
    for mode in ("auto", "off"):
        cfg = load_config(Path("configs") / "opsd-forward-kl.yaml",
                          ["lora.r=4", "lora.alpha=8", f"output_dir={tmp_path}", "loss.chunk_size=7",
                           f"speed.share_prefix={share}", f"speed.bucketing={mode}", "speed.bucket_cost=0"])
        ctx, method, _ = build(cfg, tmp_path, model=copy.deepcopy(tiny_lm).double(), tokenizer=tokenizer)
        with torch.no_grad():
            for name, param in ctx.model.named_parameters():
                if "lora_" in name:
                    param.copy_(0.3 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name)),
                                                  dtype=param.dtype))
        ctx.model.train()
        seqs = [TrainSequence(student_prompt=method.student_prompt(problems[k % 3]),
                              response=torch.randint(10, 2000, (n,), generator=gen).tolist(),
                              teacher_prompt=method.teacher_prompt(problems[k % 3]), problem_id=f"p{k % 3}")
                for k, n in enumerate(lengths)]
        gen = torch.Generator().manual_seed(6)  # the same responses in both runs
        loss, metrics = method.loss(seqs, method.counts(seqs))
        results[mode] = (loss, grads_of(ctx.model, loss), metrics["batch/padding"])
    (loss_on, grads_on, pad_on), (loss_off, grads_off, pad_off) = results["auto"], results["off"]
    assert float(loss_off.detach()) > 1e-3
    torch.testing.assert_close(loss_on, loss_off, atol=1e-10, rtol=0)
    for a, b in zip(grads_on, grads_off):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert pad_on[0] < pad_off[0] and pad_on[1] < pad_off[1]  # fewer padded and fewer computed positions


def test_padding_counts_each_groups_own_width():
    prompts = [[1, 2], [3], [4, 5, 6]]
    responses = [[7] * 9, [8], [9, 9]]
    groups = Bucketing("auto", 0)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    assert padding(prompts, responses, shared=False, bucketing=groups) == (0, sum(lengths))
    _, mask = _right_padded([p + r for p, r in zip(prompts, responses)], 0)
    assert padding(prompts, responses, shared=False) == (int((mask == 0).sum()), mask.numel())
