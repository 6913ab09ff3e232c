"""oneDNN-packed linears: the same products as `F.linear`, only where no gradient is needed."""

import pytest
import torch

from trajdistill.config import LoraSpec
from trajdistill.models.lora import apply_lora
from trajdistill.models.packed import _cache, available, packed_linears

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def logits(model, ids):
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def lora_student(tiny_lm):
    """`tiny_lm` with a LoRA adapter that changes its outputs (lora_B drawn, not zero)."""
    model = apply_lora(tiny_lm, LoraSpec(r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return model


def test_no_grad_forward_equals_the_plain_one_and_the_layers_are_restored(tiny_lm, monkeypatch):
    import trajdistill.models.packed as packed_module

    used = []
    pack = packed_module._packed
    monkeypatch.setattr(packed_module, "_packed", lambda weight, fp: used.append(weight) or pack(weight, fp))
    ids = torch.randint(10, 2000, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = logits(tiny_lm, ids)
        with packed_linears(tiny_lm):
            patched = [m for m in tiny_lm.modules() if "forward" in vars(m)]
            packed = logits(tiny_lm, ids)
        after = logits(tiny_lm, ids)
    assert len(patched) == sum(type(m) is torch.nn.Linear and min(m.weight.shape) >= 64 for m in tiny_lm.modules()) > 0
    assert not any("forward" in vars(m) for m in tiny_lm.modules())
    assert len(used) == len(patched)  # every linear took the packed path (the head once)
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(after, plain)


def test_a_weight_changed_in_place_is_packed_again(tiny_lm):
    ids = torch.randint(10, 2000, (2, 5), generator=torch.Generator().manual_seed(1))
    layer = tiny_lm.model.layers[0].mlp.down_proj
    with torch.no_grad(), packed_linears(tiny_lm):
        before = logits(tiny_lm, ids)
        layer.weight.mul_(3.0)  # an optimizer step or a checkpoint load bumps the version counter
        changed = logits(tiny_lm, ids)
    with torch.no_grad():
        expected = logits(tiny_lm, ids)
    assert float((changed - before).abs().max()) > 1e-2
    torch.testing.assert_close(changed, expected, rtol=1e-4, atol=1e-4)


def test_passes_with_gradient_autocast_or_float64_take_f_linear_bit_for_bit(tiny_lm):
    ids = torch.randint(10, 2000, (2, 6), generator=torch.Generator().manual_seed(2))
    model = apply_lora(tiny_lm, LoraSpec(r=4, alpha=8))
    plain = logits(model, ids)
    with packed_linears(model):
        graded = logits(model, ids)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            cast = logits(model, ids)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cast_plain = logits(model, ids)
    assert torch.equal(graded, plain) and graded.requires_grad
    assert torch.equal(cast, cast_plain)
    wide = model.double()
    with torch.no_grad():
        exact = logits(wide, ids)
        with packed_linears(wide):
            assert torch.equal(logits(wide, ids), exact)


def test_lora_and_the_adapter_off_teacher_follow_their_weights(tiny_lm):
    ids = torch.randint(10, 2000, (2, 7), generator=torch.Generator().manual_seed(3))
    model = lora_student(tiny_lm)
    with torch.no_grad():
        student, base = logits(model, ids), None
        with model.disable_adapter():
            base = logits(model, ids)
        with packed_linears(model):
            packed_student = logits(model, ids)
            with model.disable_adapter():
                packed_base = logits(model, ids)
    assert float((student - base).abs().max()) > 1e-2
    torch.testing.assert_close(packed_student, student, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed_base, base, rtol=1e-4, atol=1e-4)


def test_packed_copies_leave_with_their_weights():
    layer = torch.nn.Linear(96, 64)
    with torch.no_grad(), packed_linears(layer):
        layer(torch.randn(2, 96))
    key = id(layer.weight)
    assert key in _cache
    del layer
    assert key not in _cache


def test_thin_matrices_such_as_lora_factors_stay_on_f_linear():
    thin = torch.nn.Linear(576, 16)
    with packed_linears(thin):
        assert "forward" not in vars(thin)


def test_off_changes_nothing(tiny_lm):
    with packed_linears(tiny_lm, "off"):
        assert not any("forward" in vars(m) for m in tiny_lm.modules())
    with pytest.raises(ValueError, match="auto or off"):
        with packed_linears(tiny_lm, "on"):
            pass


def test_lora_layers_run_one_product_with_the_merged_weight_and_follow_each_step(tiny_lm, monkeypatch):
    import trajdistill.models.packed as packed_module

    merged = []
    merge = packed_module._lora_weight
    monkeypatch.setattr(packed_module, "_lora_weight", lambda module: merged.append(module) or merge(module))
    ids = torch.randint(10, 2000, (2, 7), generator=torch.Generator().manual_seed(4))
    model = apply_lora(tiny_lm, LoraSpec(r=4, alpha=8))
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(2):  # a training step between two sampling calls: the merged weights follow
        with torch.no_grad():
            plain = logits(model, ids)
            merged.clear()
            with packed_linears(model):
                packed = logits(model, ids)
        assert len(merged) == len(lora_layers) > 0
        torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)
        model.train()
        logits(model, ids).logsumexp(-1).mean().backward()  # a training step, outside the block
        optimizer.step()
        optimizer.zero_grad()
    assert float((logits(model, ids) - plain).abs().max()) > 1e-3  # the adapter did change


def test_sharded_models_are_left_alone(tmp_path):
    """FSDP gathers sharded weights into the same tensors before each forward: no packed copies."""
    import subprocess
    import sys

    script = """
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from trajdistill.models import load_tokenizer, tiny_model
from trajdistill.models.packed import packable, packed_linears
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29571", world_size=1, rank=0)
model = tiny_model(load_tokenizer("smollm2-135m-instruct"), seed=0)
assert packable(model)
for layer in model.model.layers:
    fully_shard(layer)
fully_shard(model)
assert not packable(model)
with packed_linears(model):
    assert not any("forward" in vars(m) for m in model.modules())
dist.destroy_process_group()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("change", ["merge_adapter", "data_assign", "data_inplace"])
def test_writes_that_skip_the_version_counter_are_seen_at_the_next_block(tiny_lm, change):
    """peft's merge_adapter writes through `.data`, a load may assign new tensors: the packed
    copies made before must not be used after."""
    ids = torch.randint(10, 2000, (2, 7), generator=torch.Generator().manual_seed(5))
    model = lora_student(tiny_lm)
    with torch.no_grad():
        with packed_linears(model):
            logits(model, ids)  # packs and caches every weight
        layer = model.base_model.model.model.layers[0].mlp.down_proj
        if change == "merge_adapter":
            model.merge_adapter()
        elif change == "data_assign":
            layer.base_layer.weight.data = layer.base_layer.weight.detach() * 3.0
        else:
            layer.base_layer.weight.data.mul_(3.0)
        expected = logits(model, ids)
        with packed_linears(model):
            got = logits(model, ids)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_trainable_bias_keeps_its_gradient(tiny_lm):
    layer = torch.nn.Linear(96, 64)
    layer.weight.requires_grad_(False)  # frozen weight, trained bias (BitFit)
    with packed_linears(layer):
        out = layer(torch.randn(3, 96))
    assert out.requires_grad
