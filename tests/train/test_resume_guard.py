"""`--resume` refuses a config that changes the experiment, naming every changed field."""

import pytest

from trajdistill import UserError
from trajdistill.config import load_config, save_config
from trajdistill.train.resume import check_resume, refused_changes

BASE = ["optim.steps=10", "optim.lr=0.001", "eval.every=0"]


def saved_run(tmp_path, sets=BASE):
    save_config(load_config(None, sets), tmp_path / "config.yaml")
    return tmp_path


def test_changing_the_learning_rate_and_a_method_option_is_refused_with_both_fields(tmp_path):
    run = saved_run(tmp_path)
    with pytest.raises(UserError) as err:
        check_resume(run, load_config(None, BASE + ["optim.lr=0.002", "opsd.off_policy_fraction=0.5"]))
    message = str(err.value)
    assert "optim.lr 0.001 -> 0.002" in message
    assert "opsd.off_policy_fraction 0.0 -> 0.5" in message
    assert "\n" not in message


@pytest.mark.parametrize("change", ["optim.steps=30", "eval.every=5", "eval.after=false", "eval.before=false",
                                    "checkpoint.every=2", "checkpoint.keep_last=5", "output_dir=elsewhere",
                                    "sampling.batch_size=4", "model.device=cpu"])
def test_harmless_changes_are_allowed(tmp_path, change):
    check_resume(saved_run(tmp_path), load_config(None, BASE + [change]))


def test_fewer_steps_is_refused(tmp_path):
    old = load_config(None, BASE)
    assert refused_changes(old, load_config(None, BASE + ["optim.steps=5"])) == {"optim.steps": (10, 5)}


def test_a_run_directory_without_a_saved_config_resumes_unchecked(tmp_path):
    check_resume(tmp_path, load_config(None, BASE + ["optim.lr=0.5"]))


def test_an_unreadable_saved_config_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("optim: [unclosed\n")
    with pytest.raises(UserError, match="config.yaml: cannot read the run's saved config"):
        check_resume(tmp_path, load_config(None, BASE))


@pytest.mark.parametrize("method", ["opsd", "sft", "dpo"])
def test_a_saved_config_reads_back_as_the_same_config(tmp_path, method):
    sets = [f"method={method}"] + ([f"{method}.dataset=pairs.jsonl"] if method != "opsd" else [])
    cfg = load_config(None, sets)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").tree() == cfg.tree()
    check_resume(tmp_path, cfg)
