import pytest

from trajdistill import UserError
from trajdistill.config import load_config


def test_defaults_are_valid():
    cfg = load_config(None)
    assert cfg.method == "opsd" and cfg.loss.divergence == "forward_kl" and cfg.loss.chunk_size == 512


def test_unknown_field_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  divergnce: reverse_kl\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "loss.divergnce" in str(err.value)
    assert "\n" not in str(err.value)


def test_wrong_value_is_reported_with_its_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: {divergence: cross_entropy}\n")
    with pytest.raises(UserError, match="loss.divergence"):
        load_config(path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: opsd\nloss: [unclosed\n")
    with pytest.raises(UserError, match=r"line \d"):
        load_config(path)


def test_base_presets_merge_and_overrides_win(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1, steps: 3}\nloss: {divergence: reverse_kl}\n")
    (tmp_path / "top.yaml").write_text("base: base.yaml\noptim: {steps: 5}\n")
    cfg = load_config(tmp_path / "top.yaml", ["optim.lr=0.5", "loss.top_k=32"])
    assert cfg.optim.steps == 5 and cfg.optim.lr == 0.5
    assert cfg.loss.divergence == "reverse_kl" and cfg.loss.top_k == 32


def test_opd_requires_a_teacher():
    with pytest.raises(UserError, match="teacher"):
        load_config(None, ["method=opd"])


def test_fail_to_pass_filter_is_only_for_trd():
    with pytest.raises(UserError, match="opsd.outcome_filter"):
        load_config(None, ["opsd.outcome_filter=fail_to_pass"])
    assert load_config(None, ["method=trd", "trd.outcome_filter=fail_to_pass"]).options.outcome_filter == "fail_to_pass"


def test_every_shipped_preset_validates():
    from pathlib import Path

    presets = [p for p in Path("configs").glob("*.yaml") if not p.name.startswith("_")]
    assert len(presets) >= 10
    from trajdistill.methods import method_names

    for p in presets:
        cfg = load_config(p)
        assert cfg.method in method_names()


def test_drop_truncated_is_refused_for_trd():
    with pytest.raises(UserError, match="trd.drop_truncated': does not apply to trd"):
        load_config("configs/trd-opsd.yaml", ["trd.drop_truncated=true"])


def test_scale_options_default_to_the_single_device_behaviour():
    cfg = load_config(None)
    assert (cfg.distributed.strategy, cfg.model.autocast, cfg.model.gradient_checkpointing) == ("ddp", "none", False)
    cfg = load_config(None, ["distributed.strategy=fsdp", "model.autocast=bf16", "model.gradient_checkpointing=true"])
    assert (cfg.distributed.strategy, cfg.model.autocast, cfg.model.gradient_checkpointing) == ("fsdp", "bf16", True)
    with pytest.raises(UserError, match="distributed.strategy"):
        load_config(None, ["distributed.strategy=zero3"])


def test_the_teacher_has_no_precision_policy_of_its_own():
    with pytest.raises(UserError, match="teacher.autocast.*model.autocast"):
        load_config(None, ["method=opd", "teacher.name=x", "teacher.autocast=bf16"])


def test_share_prefix_reads_yaml_on_and_off_as_modes(tmp_path):
    assert load_config(None).speed.share_prefix == "auto"
    for text, mode in (("on", "on"), ("off", "off"), ("auto", "auto")):
        path = tmp_path / f"{text}.yaml"
        path.write_text(f"speed:\n  share_prefix: {text}\n")  # YAML 1.1 reads on/off as booleans
        assert load_config(path).speed.share_prefix == mode
    path = tmp_path / "bad.yaml"
    path.write_text("speed:\n  share_prefix: sometimes\n")
    with pytest.raises(UserError, match="speed.share_prefix"):
        load_config(path)
    path.write_text("speed:\n  bucketing: off\n  packed_linear: off\n")
    cfg = load_config(path)
    assert (cfg.speed.bucketing, cfg.speed.packed_linear) == ("off", "off")


def test_the_speed_switches_keep_their_defaults():
    speed = load_config(None).speed
    assert (speed.share_prefix, speed.bucketing, speed.bucket_cost, speed.packed_linear) == ("auto", "auto", 64, "auto")
