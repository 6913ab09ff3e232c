"""The Python API: `trajdistill.train` / `trajdistill.evaluate` return the run's results as data, a
method registered in the same script trains through it, and `eval`'s config sections apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field

import trajdistill
from trajdistill import UserError
from trajdistill.methods import register, unregister
from trajdistill.methods.onpolicy import OnPolicyDistillation, OnPolicyOptions

TINY = {  # a run of seconds on the tiny model
    "data": {"train": "builtin:arith-mix", "max_train": 8, "held_out": 3},
    "eval": {"k": [1, 2], "greedy": False, "max_new_tokens": 4},
    "sampling": {"n": 2, "max_new_tokens": 6},
    "lora": {"r": 4, "alpha": 8},
    "optim": {"steps": 2, "problems_per_step": 2, "lr": 0.01},
    "loss": {"chunk_size": 7},
    "opsd": {"diagnostics": False},
}


def test_train_returns_the_runs_results_as_data(tmp_path, tiny_lm, tokenizer):
    result = trajdistill.train(TINY, {"optim.steps": 2, "seed": 3}, run_dir=tmp_path / "run",
                               model=tiny_lm, tokenizer=tokenizer)
    assert isinstance(result, trajdistill.TrainResult) and result.finished
    assert result.run_dir == tmp_path / "run" and result.config.seed == 3
    assert [m["step"] for m in result.metrics] == [1, 2] and all(m["loss"] > 0 for m in result.metrics)
    assert set(result.evaluations) == {"before", "after"}
    rows = result.table
    assert [r["run"] for r in rows] == ["before", "after", "change (paired)"]
    assert all(r["problems"] == 3 for r in rows)
    assert {"avg@2", "avg@2_se", "pass@1", "pass@2", "tokens"} <= set(rows[0]) and "greedy" not in rows[0]
    assert rows[2]["pass@2"] == pytest.approx(rows[1]["pass@2"] - rows[0]["pass@2"])
    assert result.markdown == (result.run_dir / "eval" / "before_after.md").read_text()
    assert result.final_model == result.run_dir / "final" and (result.final_model / "config.json").is_file()
    assert set(result.files) == {"config", "log", "metrics", "before_after", "final"}
    # the config the run saved is the one it returned
    assert trajdistill.load_config(result.files["config"]).tree() == result.config.tree()


def test_train_refuses_a_bad_override_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="field 'optim.lr'"):
        trajdistill.train(TINY, ["optim.lr=-1"], run_dir=tmp_path / "run")
    with pytest.raises(UserError, match="field 'sampling.n': method sft samples nothing"):
        trajdistill.train("configs/sft.yaml", {"sampling.n": 8}, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


class ScaledOptions(OnPolicyOptions):
    scale: float = Field(1.0, gt=0.0)


class ScaledKL(OnPolicyDistillation):
    """OPSD with every token's weight scaled: registered here, in the script that trains it."""

    Options = ScaledOptions
    fixed_setting = "opsd"
    scales: list[float] = []

    def weights(self, seqs, batch, totals):
        w, z = super().weights(seqs, batch, totals)
        ScaledKL.scales.append(self.opts.scale)
        return w * self.opts.scale, z


def test_a_method_registered_in_the_same_script_trains_through_the_api(tmp_path, tiny_lm, tokenizer):
    register("scaled-kl-api", ScaledKL)
    ScaledKL.scales = []
    try:
        tree = {k: v for k, v in TINY.items() if k != "opsd"}
        result = trajdistill.train({**tree, "method": "scaled-kl-api", "scaled-kl-api": {"scale": 0.25}},
                                   {"eval.before": False, "eval.after": False}, run_dir=tmp_path / "run",
                                   model=tiny_lm, tokenizer=tokenizer, stop_after=1)
    finally:
        unregister("scaled-kl-api")
    assert result.config.method == "scaled-kl-api" and result.config.options.scale == 0.25
    assert not result.finished and [m["step"] for m in result.metrics] == [1]
    assert set(ScaledKL.scales) == {0.25}
    assert result.table == [] and result.markdown is None


def test_evaluate_returns_the_table_as_data_and_honours_the_config(tmp_path, tiny_lm, tokenizer):
    preset = tmp_path / "eval.yaml"
    preset.write_text("prompt: {instruction: 'Answer in a box.'}\n"
                      "data: {train: 'builtin:arith-mix', held_out: 5, max_eval: 4}\n"
                      "eval: {k: [1, 3], greedy: false, max_new_tokens: 3, temperature: 0.8}\n")
    result = trajdistill.evaluate(tiny_lm, config=preset, tokenizer=tokenizer, out_dir=tmp_path / "out",
                                  label="tiny")
    assert isinstance(result, trajdistill.EvalResult)
    (row,) = result.table
    assert row["run"] == "tiny" and row["problems"] == 4  # data.max_eval of the 5 held out
    assert "greedy" not in row and {"avg@3", "pass@1", "pass@3"} <= set(row)  # eval.k and eval.greedy
    assert 0.0 <= row["pass@3"] <= 1.0
    samples = [json.loads(line) for line in result.files["samples"].read_text().splitlines()]
    assert len(samples) == 4 * 3 and max(s["tokens"] for s in samples) <= 3  # eval.max_new_tokens
    assert result.markdown == result.files["table"].read_text()
    # arguments override the config
    again = trajdistill.evaluate(tiny_lm, config=preset, tokenizer=tokenizer, out_dir=None, k=[1], limit=2)
    assert again.table[0]["problems"] == 2 and "avg@1" in again.table[0] and again.files == {}


def test_evaluate_reads_data_with_the_configs_kind(tmp_path):
    from trajdistill.api import evaluation_problems, resolve_config

    code = Path(trajdistill.__file__).parent / "resources" / "code_problems.jsonl"
    cfg = resolve_config({"data": {"train": str(code), "kind": "code", "held_out": 4, "max_eval": 0}})
    problems = evaluation_problems(cfg)
    assert len(problems) == 4 and {p.kind for p in problems} == {"code"}  # not graded as math
    assert all(p.tests is not None for p in problems)
    held = {p.id for p in problems}
    rest = evaluation_problems(cfg, split="train")
    assert held.isdisjoint(p.id for p in rest) and len(rest) + 4 == len(evaluation_problems(cfg, split="all"))


def test_evaluate_names_a_bad_argument_before_loading_anything(tmp_path):
    with pytest.raises(UserError, match="--k values must be at least 1"):
        trajdistill.evaluate(str(tmp_path / "no-model"), "builtin:arith", k=[0])
    with pytest.raises(UserError, match="field 'eval.top_p'"):
        trajdistill.evaluate(str(tmp_path / "no-model"), "builtin:arith", overrides=["eval.top_p=2"])


def test_trajdistill_train_stays_the_trainer_package_too():
    import inspect

    import trajdistill.train.run  # noqa: F401  (importing the subpackage keeps the function callable)

    assert callable(trajdistill.train) and hasattr(trajdistill.train, "run")
    assert list(inspect.signature(trajdistill.train).parameters)[:2] == ["config", "overrides"]


def test_a_plugins_list_in_the_config_is_imported_before_the_method_is_checked(tmp_path):
    from trajdistill.api import resolve_config
    from trajdistill.methods import method_names

    plugin = tmp_path / "file_plugin.py"
    plugin.write_text("from trajdistill.methods import register\n"
                      "from trajdistill.methods.onpolicy import OPSD\n\n\n"
                      "class FileOPSD(OPSD):\n    pass\n\n\n"
                      "register('scaled-kl-file', FileOPSD)\n")
    try:
        cfg = resolve_config({"plugins": [str(plugin)], "method": "scaled-kl-file",
                              "scaled-kl-file": {"drop_truncated": True}})
        assert cfg.method == "scaled-kl-file" and cfg.options.drop_truncated and cfg.plugins == [str(plugin)]
        assert cfg.tree()["plugins"] == [str(plugin)]
    finally:
        unregister("scaled-kl-file")
    assert "scaled-kl-file" not in method_names()
    with pytest.raises(UserError, match=r"field 'plugins': cannot import plugin '.*missing\.py': no such file"):
        resolve_config({"plugins": [str(tmp_path / "missing.py")]})
    with pytest.raises(UserError, match="field 'plugins': expected a list of module names"):
        resolve_config({"plugins": "scaled_plugin"})
