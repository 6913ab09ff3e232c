"""Trace generation: labelled rows, and an interrupted run resumes without duplicates or losses."""

import json

import pytest

from trajdistill import UserError
from trajdistill.data.traces import TraceSettings, generate_traces, read_rows
from trajdistill.records import Problem, Verdict
from trajdistill.rollout import make_sampler



def problems(k=5):
    return [Problem(id=f"p{i}", prompt=f"What is {i} + 1?", answer=str(i + 1),
                    reference=f"{i} + 1 = {i + 1}. The answer is \\boxed{{{i + 1}}}.") for i in range(k)]


def settings(**kw):
    base = dict(teacher="tiny", context="privileged", n=2, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=4,
                instruction="Box the answer.", system=None, privileged="{problem}\nRef: {reference}\n{instruction}",
                seed=0)
    return TraceSettings(**{**base, **kw})


class FlakyVerifier:
    """Alternates verdicts; raises KeyboardInterrupt at call `stop_at` (simulated kill)."""

    def __init__(self, stop_at=None):
        self.calls, self.stop_at = 0, stop_at

    def __call__(self, problem, response):
        self.calls += 1
        if self.stop_at is not None and self.calls == self.stop_at:
            raise KeyboardInterrupt
        return Verdict(passed=self.calls % 2 == 0, status="passed" if self.calls % 2 == 0 else "failed")


def test_rows_carry_prompt_completion_verdict_and_length(tmp_path, tiny_lm, tokenizer):
    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=8, progress=False)
    rows = generate_traces(problems(2), sampler, tokenizer, FlakyVerifier(), tmp_path, settings())
    assert len(rows) == 4
    row = rows[0]
    assert row["prompt"] == "What is 0 + 1?\n\nBox the answer."  # the student's prompt, not the privileged one
    assert row["context"] == "privileged" and isinstance(row["completion"], str)
    assert 1 <= row["length"] <= 4 and row["prompt_length"] > 5 and isinstance(row["correct"], bool)
    assert read_rows(tmp_path) == rows and read_rows(tmp_path / "traces.parquet") == rows
    assert json.loads((tmp_path / "summary.json").read_text())["traces"] == 4


def test_an_interrupted_run_resumes_without_duplicates_or_losses(tmp_path, tiny_lm, tokenizer):
    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=8, progress=False)
    # chunks of 2 problems x 2 samples: the kill lands inside the second chunk (call 6)
    with pytest.raises(KeyboardInterrupt):
        generate_traces(problems(), sampler, tokenizer, FlakyVerifier(stop_at=6), tmp_path, settings(),
                        problems_per_chunk=2)
    assert len(list((tmp_path / "chunks").glob("chunk-*.jsonl"))) == 1
    verifier = FlakyVerifier()
    rows = generate_traces(problems(), sampler, tokenizer, verifier, tmp_path, settings(), problems_per_chunk=2)
    assert verifier.calls == 3 * 2  # only the 3 unfinished problems were sampled again
    keys = [(r["problem_id"], r["sample_index"]) for r in rows]
    assert keys == [(f"p{i}", j) for i in range(5) for j in range(2)]
    # a third run has nothing to do and changes nothing
    again = FlakyVerifier()
    assert generate_traces(problems(), sampler, tokenizer, again, tmp_path, settings(), problems_per_chunk=2) == rows
    assert again.calls == 0


def test_resuming_with_other_settings_is_refused(tmp_path, tiny_lm, tokenizer):
    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=8, progress=False)
    generate_traces(problems(1), sampler, tokenizer, FlakyVerifier(), tmp_path, settings())
    with pytest.raises(UserError, match="other settings"):
        generate_traces(problems(1), sampler, tokenizer, FlakyVerifier(), tmp_path, settings(temperature=0.5))


def test_privileged_context_needs_references(tmp_path, tiny_lm, tokenizer):
    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=8, progress=False)
    bare = [Problem(id="x", prompt="What is 1 + 1?", answer="2")]
    with pytest.raises(UserError, match="reference"):
        generate_traces(bare, sampler, tokenizer, FlakyVerifier(), tmp_path, settings())
    rows = generate_traces(bare, sampler, tokenizer, FlakyVerifier(), tmp_path / "plain", settings(context="plain"))
    assert len(rows) == 2


def test_a_full_disk_keeps_the_chunks_written_before_and_the_rerun_continues(tmp_path, tiny_lm, tokenizer,
                                                                              monkeypatch):
    import errno

    from trajdistill.data import trace_generation as traces

    sampler = make_sampler("hf", tiny_lm, tokenizer, batch_size=8, progress=False)
    real = traces.atomic_write_jsonl

    def full_on_second_chunk(path, rows):
        if path.name == "chunk-000001.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, rows)

    monkeypatch.setattr(traces, "atomic_write_jsonl", full_on_second_chunk)
    with pytest.raises(UserError) as err:
        generate_traces(problems(), sampler, tokenizer, FlakyVerifier(), tmp_path, settings(), problems_per_chunk=2)
    assert str(err.value) == (f"No space left on device writing {tmp_path / 'chunks' / 'chunk-000001.jsonl'}; "
                              "the traces of the 2 problems written before are intact: free some space and "
                              "rerun the same command to continue")
    assert [p.name for p in (tmp_path / "chunks").iterdir()] == ["chunk-000000.jsonl"]
    monkeypatch.setattr(traces, "atomic_write_jsonl", real)
    verifier = FlakyVerifier()
    rows = generate_traces(problems(), sampler, tokenizer, verifier, tmp_path, settings(), problems_per_chunk=2)
    assert verifier.calls == 3 * 2 and len(rows) == 10
