"""The TRD paper's training diagnostics (appendix C.5) against brute-force references on small tensors."""

from types import SimpleNamespace

import pytest
import torch

from trajdistill.eval.diagnostics import (
    EPISTEMIC_PHRASES,
    StatisticsObserver,
    diagnostic_sums,
    epistemic_token_ids,
    kl_by_outcome,
    token_statistics,
    training_diagnostics,
)


def test_epistemic_ids_are_first_subtokens_of_bare_and_leading_space_forms(tokenizer):
    ids = epistemic_token_ids(tokenizer)
    expected = set()
    for phrase in EPISTEMIC_PHRASES:
        expected.add(tokenizer(phrase, add_special_tokens=False)["input_ids"][0])
        expected.add(tokenizer(" " + phrase, add_special_tokens=False)["input_ids"][0])
    assert set(ids) == expected and len(ids) == len(set(ids)) and list(ids) == sorted(ids)
    wait = tokenizer(" Wait", add_special_tokens=False)["input_ids"]
    assert wait[0] in ids and tokenizer("Wait", add_special_tokens=False)["input_ids"][0] in ids


def test_kl_by_outcome_sums_each_buckets_tokens():
    per_token = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    seq_index = torch.tensor([0, 0, 1, 2, 2])
    got = kl_by_outcome(per_token, seq_index, ["fail", "pass", "fail"], prefix="kl")
    assert got == {"kl/fail": (12.0, 4.0), "kl/pass": (3.0, 1.0)}
    assert kl_by_outcome(per_token, seq_index, [None, None, None]) == {}


def brute_force(sh, sw, th, tw, targets, ids):
    log_s = torch.log_softmax(sh.double() @ sw.double().T, -1)
    log_t = torch.log_softmax(th.double() @ tw.double().T, -1)
    rows = torch.arange(len(targets))
    return log_s[rows, targets], log_t[rows, targets], log_t.exp()[:, ids].sum(-1)


def test_token_statistics_match_a_full_softmax_in_any_chunking():
    gen = torch.Generator().manual_seed(0)
    sh, th = torch.randn(9, 5, generator=gen), torch.randn(9, 6, generator=gen)
    sw, tw = torch.randn(11, 5, generator=gen), torch.randn(11, 6, generator=gen)
    targets = torch.randint(0, 11, (9,), generator=gen)
    ids = [1, 4, 7]
    exp_s, exp_t, exp_mass = brute_force(sh, sw, th, tw, targets, ids)
    for chunk in (1, 4, 100):
        got = token_statistics(sh, sw, th, tw, targets, ids, chunk_size=chunk)
        torch.testing.assert_close(got["student_logprob"].double(), exp_s, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["teacher_logprob"].double(), exp_t, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["epistemic_mass"].double(), exp_mass, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_statistics_observed_in_the_loss_pass_match_a_full_softmax_and_leave_the_loss_alone(divergence, clip):
    from trajdistill.losses.chunked import chunked_divergence_from_hidden

    gen = torch.Generator().manual_seed(2)
    sh, th = torch.randn(9, 5, generator=gen, requires_grad=True), torch.randn(9, 6, generator=gen)
    sw, tw = torch.randn(11, 5, generator=gen), torch.randn(11, 6, generator=gen)
    targets = torch.randint(0, 11, (9,), generator=gen)
    ids = [1, 4, 7]
    exp_s, exp_t, exp_mass = brute_force(sh.detach(), sw, th, tw, targets, ids)
    options = dict(teacher_hidden=th, teacher_head_weight=tw, divergence=divergence, temperature=2.0,
                   vocab_clip=clip)
    plain, plain_tokens = chunked_divergence_from_hidden(sh, sw, chunk_size=4, **options)
    (plain_grad,) = torch.autograd.grad(plain, sh)
    for chunk in (1, 4, 100):
        observer = StatisticsObserver(targets, ids)
        loss, per_token = chunked_divergence_from_hidden(sh, sw, chunk_size=chunk, observe=observer, **options)
        (grad,) = torch.autograd.grad(loss, sh)
        got = observer.stats()
        torch.testing.assert_close(got["student_logprob"], exp_s, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["teacher_logprob"], exp_t, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["epistemic_mass"], exp_mass, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(per_token, plain_tokens, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, plain_grad, rtol=1e-5, atol=1e-6)


def test_an_observer_that_missed_rows_refuses_to_report():
    observer = StatisticsObserver(torch.tensor([1, 2, 3]), [0])
    observer(0, torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(RuntimeError, match="every row"):
        observer.stats()


def test_perplexity_gap_is_the_log_ratio_of_student_to_teacher_perplexity():
    stats = {"student_logprob": torch.tensor([-2.0, -4.0]), "teacher_logprob": torch.tensor([-1.0, -1.0]),
             "epistemic_mass": torch.tensor([0.1, 0.3])}
    sums = {k: s / c for k, (s, c) in diagnostic_sums(stats).items()}
    ppl_s, ppl_t = torch.tensor(3.0).exp(), torch.tensor(1.0).exp()  # exp(mean NLL)
    assert sums["diag/log_ppl_gap"] == pytest.approx(float(ppl_s.log() - ppl_t.log()))
    assert sums["diag/student_nll"] == pytest.approx(3.0) and sums["diag/teacher_nll"] == pytest.approx(1.0)
    assert sums["diag/teacher_epistemic_mass"] == pytest.approx(0.2)


def test_a_teacher_that_puts_all_mass_on_wait_scores_one(tokenizer):
    wait = tokenizer(" Wait", add_special_tokens=False)["input_ids"][0]
    vocab, hidden = len(tokenizer), 4
    head = torch.zeros(vocab, hidden)
    head[wait] = 50.0  # with hidden states of ones, the teacher's softmax is ~all on " Wait"
    view = SimpleNamespace(student=torch.ones(3, hidden), teacher=torch.ones(3, hidden),
                           student_head=torch.zeros(vocab, hidden), teacher_head=head)
    sums = training_diagnostics(view, torch.tensor([wait, wait, wait]), tokenizer)
    mass, count = sums["diag/teacher_epistemic_mass"]
    assert count == 3 and mass / count == pytest.approx(1.0, abs=1e-6)
    # the teacher is sure of " Wait", the (uniform) student is not: a large positive gap on those tokens
    assert sums["diag/log_ppl_gap"][0] > 0


def test_opsd_baseline_logs_the_diagnostics_and_they_can_be_switched_off(tmp_path, tiny_lm, tokenizer):
    from pathlib import Path

    from trajdistill.config import load_config
    from trajdistill.train.batch import TrainSequence, collate
    from trajdistill.train.run import build

    cfg = load_config(Path("configs/opsd-forward-kl.yaml"), ["lora.r=4", f"output_dir={tmp_path}"])
    _, method, _ = build(cfg, tmp_path, model=tiny_lm, tokenizer=tokenizer)
    seq = TrainSequence(student_prompt=[1, 2, 3], response=[4, 5], teacher_prompt=[6, 7], passed=True)
    _, metrics = method.loss([seq], method.counts([seq]))
    assert {"diag/teacher_epistemic_mass", "diag/student_nll", "diag/teacher_nll", "diag/log_ppl_gap"} <= set(metrics)
    # gathered in the loss's own pass: the same sums as the separate pass over the same states
    batch = collate([seq], method.ctx.pad_id)
    separate = training_diagnostics(method.hidden([seq], batch), batch.targets, tokenizer)
    for key, (total, count) in separate.items():
        assert metrics[key][1] == count and metrics[key][0] == pytest.approx(total, rel=1e-4, abs=1e-5)
    assert metrics["kl/correct"][1] == 2
    method.opts.diagnostics = False
    assert not any(k.startswith("diag/") for k in method.loss([seq], method.counts([seq]))[1])


def test_token_statistics_without_epistemic_ids_or_tokens():
    gen = torch.Generator().manual_seed(1)
    sh, th = torch.randn(4, 5, generator=gen), torch.randn(4, 6, generator=gen)
    sw, tw = torch.randn(11, 5, generator=gen), torch.randn(11, 6, generator=gen)
    targets = torch.tensor([0, 3, 3, 10])
    got = token_statistics(sh, sw, th, tw, targets, [], chunk_size=3)
    assert torch.equal(got["epistemic_mass"], torch.zeros(4))
    empty = token_statistics(sh[:0], sw, th[:0], tw, targets[:0], [1, 2])
    assert all(v.shape == (0,) and v.dtype == torch.float32 for v in empty.values())
