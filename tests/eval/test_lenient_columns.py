"""`eval.also_lenient`: greedy and Avg@n re-graded leniently from the same samples, beside the
strict columns, which stay as they are."""

from trajdistill.config import EvalSpec, PromptSpec
from trajdistill.eval.runner import evaluate, paired_change, summary_markdown
from trajdistill.records import Problem, Rollout
from trajdistill.verify import Verifiers

# Per problem: the greedy answer, then the sampled ones (n = 2). Gold: 5 and 7.
ANSWERS = {
    "p1": ["The answer is \\boxed{5}.", "The answer is 5.", "\\boxed{5}"],
    "p2": ["The answer is 7.", "So 3 + 4 = 7.", "I think it is 8."],
}


class ScriptedSampler:
    """Returns ANSWERS in order: the first for greedy calls, the others for sampled ones."""

    def __init__(self, answers=ANSWERS):
        self.answers = answers
        self.calls = 0

    def sample(self, prompts, params, problem_ids):
        self.calls += 1
        out = []
        for pid in problem_ids:
            texts = self.answers[pid][:1] if params.temperature == 0 else self.answers[pid][1:1 + params.n]
            out += [Rollout(pid, [1], [2] * (j + 3), t, sample_index=j) for j, t in enumerate(texts)]
        return out


def run(tokenizer, also_lenient, answers=ANSWERS):
    problems = [Problem(id="p1", prompt="What is 2 + 3?", answer="5"),
                Problem(id="p2", prompt="What is 3 + 4?", answer="7")]
    sampler = ScriptedSampler(answers)
    spec = EvalSpec(k=[1, 2], also_lenient=also_lenient)
    summary = evaluate(sampler, tokenizer, problems, spec, PromptSpec(), Verifiers({"math": {"grading": "strict"}}))
    return summary, sampler.calls


def test_lenient_columns_regrade_the_same_samples(tokenizer):
    strict, calls_strict = run(tokenizer, False)
    both, calls_both = run(tokenizer, True)
    assert calls_both == calls_strict == 2  # no extra sampling
    for col in ("greedy", "avg@2", "pass@1", "pass@2", "response_tokens"):
        assert both[col] == strict[col]  # strict columns unchanged
    assert "greedy_lenient" not in strict and "avg@2_lenient" not in strict
    assert strict["greedy"]["mean"] == 0.5  # only p1's boxed greedy answer counts strictly
    assert both["greedy_lenient"]["mean"] == 1.0  # p2's "The answer is 7." counts leniently
    assert strict["avg@2"]["mean"] == 0.25  # p1: 1 of 2 boxed; p2: none boxed
    assert both["avg@2_lenient"]["mean"] == 0.75  # p1 2 of 2, p2 1 of 2 (the last number)
    header = summary_markdown([both]).splitlines()[0]
    assert header == ("| run | problems | greedy | avg@2 | pass@1 | pass@2 | greedy (lenient) | avg@2 (lenient) "
                      "| tokens |")
    assert summary_markdown([strict]).splitlines()[0] == "| run | problems | greedy | avg@2 | pass@1 | pass@2 | tokens |"


def test_lenient_columns_pair_before_and_after(tokenizer):
    before, _ = run(tokenizer, True)
    after_answers = {"p1": ANSWERS["p1"], "p2": ["\\boxed{7}", "\\boxed{7}", "It is 8."]}
    after, _ = run(tokenizer, True, after_answers)
    assert paired_change(before, after, "greedy")["mean"] == 0.5
    assert paired_change(before, after, "greedy_lenient")["mean"] == 0.0  # right before, only unboxed
    assert paired_change(before, after, "avg@2_lenient")["mean"] == 0.0
    last = summary_markdown([before, after]).splitlines()[-1]
    assert last.startswith("| change (paired) | 2 | +50.0 ± 50.0 |") and "| +0.0 ± 0.0 | +0.0 ± 0.0 |" in last
