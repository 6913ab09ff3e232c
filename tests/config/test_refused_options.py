"""An option that does not apply to the chosen divergence, backend, method or strategy is an error
naming the field, not a silent no-op; a default value written out (a saved config.yaml) is not."""

from pathlib import Path

import pytest

from trajdistill import UserError
from trajdistill.config import check_for_training, load_config, save_config
from trajdistill.train.resume import saved_config

SAMPLED = "loss.divergence=sampled_token"


REFUSED = [
    ([SAMPLED, "loss.top_k=32"], "loss.top_k", "does not apply to divergence sampled_token"),
    ([SAMPLED, "loss.vocab_clip=0.05"], "loss.vocab_clip", "does not apply to divergence sampled_token"),
    ([SAMPLED, "loss.token_clip=0.1"], "loss.token_clip", "does not apply to divergence sampled_token"),
    ([SAMPLED, "loss.beta=0.2"], "loss.beta", "does not apply to divergence sampled_token"),
    (["loss.divergence=forward_kl", "loss.beta=0.2"], "loss.beta", "only divergence jsd uses it"),
    (["loss.divergence=reverse_kl", "loss.beta=0.9"], "loss.beta", "only divergence jsd uses it"),
    (["loss.tail_bucket=true"], "loss.tail_bucket", "applies only with loss.top_k"),
    (["sampling.vllm.gpu_memory_utilization=0.5"], "sampling.vllm.gpu_memory_utilization",
     "apply only to sampling.backend vllm (this config uses native)"),
    (["sampling.backend=hf", "sampling.vllm.max_model_len=2048"], "sampling.vllm.max_model_len",
     "this config uses hf"),
    (["method=topd", "topd.guidance_weight=0.5"], "topd.guidance_weight", "applies only with guidance: true"),
    (["method=topd", "topd.guidance_temperature=0.7"], "topd.guidance_temperature", "applies only with guidance"),
    (["method=topd", "topd.horizon=8"], "topd.horizon", "applies only with guidance"),
    (["method=topd", "topd.max_branches=4"], "topd.max_branches", "applies only with guidance"),
    (["distributed.cpu_offload=true"], "distributed.cpu_offload", "applies only to distributed.strategy fsdp"),
    (["distributed.reshard_after_forward=false"], "distributed.reshard_after_forward", "strategy fsdp"),
    (["sampling.backend=vlm"], "sampling.backend", "unknown sampling backend 'vlm' (choose one of: hf, native, vllm)"),
]


@pytest.mark.parametrize("overrides, field, reason", REFUSED, ids=[" ".join(case[0]) for case in REFUSED])
def test_an_option_that_would_be_ignored_is_an_error_naming_it(overrides, field, reason):
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert f"field '{field}': " in message and reason in message, message
    assert "\n" not in message and "Value error" not in message


def test_sampling_n_is_refused_for_training_an_offline_method():
    cfg = load_config("configs/sft.yaml", ["sampling.n=8"])  # `traces generate` reads it: the config loads
    with pytest.raises(UserError, match=r"field 'sampling.n': method sft samples nothing during training"):
        check_for_training(cfg, "configs/sft.yaml")
    check_for_training(load_config("configs/sft.yaml"))  # the preset's own n (the default) is fine
    check_for_training(load_config(None, ["sampling.n=8"]))  # an on-policy method samples n rollouts


@pytest.mark.parametrize("overrides", [
    [SAMPLED, "loss.beta=0.5", "loss.tail_bucket=false"],  # defaults, written out
    ["loss.divergence=jsd", "loss.beta=0.2"],
    ["loss.divergence=reverse_kl", "loss.top_k=32", "loss.tail_bucket=true"],
    ["sampling.backend=vllm", "sampling.vllm.gpu_memory_utilization=0.5"],
    ["method=topd", "topd.guidance=true", "topd.horizon=8", "topd.guidance_weight=0.5"],
    ["method=topd", "topd.horizon=16"],  # the default
    ["distributed.strategy=fsdp", "distributed.cpu_offload=true", "distributed.reshard_after_forward=false"],
])
def test_what_applies_still_loads(overrides):
    load_config(None, overrides)


def test_a_saved_config_of_every_preset_loads_back(tmp_path):
    """config.yaml holds every field, defaults included: none of them counts as set."""
    for preset in sorted(Path("configs").glob("*.yaml")):
        cfg = load_config(preset)
        save_config(cfg, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml").tree() == cfg.tree(), preset
        if not preset.name.startswith("_"):
            check_for_training(cfg, str(preset))


def test_assigning_an_option_that_does_not_apply_is_refused_too():
    cfg = load_config(None, [SAMPLED])
    with pytest.raises(ValueError, match="top_k"):
        cfg.loss.top_k = 8


MOVED = [("loss.share_prefix", "off"), ("loss.bucketing", "off"), ("loss.bucket_cost", 0),
         ("model.packed_linear", "off")]


@pytest.mark.parametrize("old, value", MOVED, ids=[m[0] for m in MOVED])
def test_a_speed_switch_at_its_old_place_names_the_new_one(old, value, tmp_path):
    new = "speed." + old.split(".")[1]
    with pytest.raises(UserError) as err:
        load_config(None, [f"{old}={value}"])
    assert str(err.value) == f"defaults: field '{old}' moved to '{new}'"
    section, name = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(UserError, match=f"field '{old}' moved to '{new}'"):
        load_config(path)
    assert getattr(load_config(None, [f"{new}={value}"]).speed, name) == value


def test_the_teachers_packed_linear_is_refused_for_the_speed_section():
    with pytest.raises(UserError, match="field 'teacher.packed_linear' moved to 'speed.packed_linear'"):
        load_config(None, ["method=opd", "teacher.name=x", "teacher.packed_linear=off"])


@pytest.mark.parametrize("name, value", [("share_prefix", "off"), ("bucketing", "off"), ("bucket_cost", 8)])
def test_the_losss_speed_switches_are_refused_for_a_sequence_objective(name, value):
    with pytest.raises(UserError, match=f"field 'speed.{name}': method sft does not use it"):
        load_config("configs/sft.yaml", [f"speed.{name}={value}"])
    load_config("configs/sft.yaml", ["speed.packed_linear=off"])  # its evaluation samples: applies


def test_a_run_saved_before_the_speed_section_still_resumes(tmp_path):
    """A run directory's config.yaml written with the switches under loss:/model: reads back with
    them under speed: (what --resume compares); a user's config is refused instead (above)."""
    cfg = load_config(None, ["speed.share_prefix=off", "speed.bucket_cost=8", "speed.packed_linear=off"])
    tree = cfg.tree()
    speed = tree.pop("speed")
    tree["loss"].update({k: speed[k] for k in ("share_prefix", "bucketing", "bucket_cost")})
    tree["model"]["packed_linear"] = speed["packed_linear"]
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    assert saved_config(tmp_path).tree() == cfg.tree()
