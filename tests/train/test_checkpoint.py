"""Checkpoints carry a manifest; a damaged newest checkpoint is passed over for the previous one."""

import errno
import json
import warnings
from pathlib import Path

import pytest
import torch

from trajdistill import RunWarning
from trajdistill.train import checkpoint
from trajdistill.train.checkpoint import MANIFEST, latest_checkpoint, load_checkpoint, save_checkpoint


def parts():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler


def save_steps(run_dir: Path, steps, keep_last=5):
    model, optimizer, scheduler = parts()
    for step in steps:
        with torch.no_grad():
            model.weight.fill_(float(step))
        save_checkpoint(run_dir, step, model, optimizer, scheduler, {}, keep_last=keep_last)


def test_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    save_steps(tmp_path, [1])
    folder = tmp_path / "checkpoints" / "step-1"
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(files) == {p.name for p in folder.iterdir()} - {MANIFEST}
    for name, entry in files.items():
        assert entry["bytes"] == (folder / name).stat().st_size
        assert entry["sha256"] == checkpoint.file_sha256(folder / name)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path):
    save_steps(tmp_path, [1, 2])
    weights = tmp_path / "checkpoints" / "step-2" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.warns(RunWarning, match=r"step-2 is damaged: trainable.safetensors has \d+ bytes.*resuming from step-1"):
        found = latest_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoints" / "step-1"
    model, optimizer, scheduler = parts()
    assert load_checkpoint(found, model, optimizer, scheduler)["step"] == 1
    assert torch.all(model.weight == 1.0)


def test_altered_bytes_and_a_missing_manifest_are_damage_too(tmp_path):
    save_steps(tmp_path, [1, 2, 3])
    state = tmp_path / "checkpoints" / "step-3" / "training_state.pt"
    data = bytearray(state.read_bytes())
    data[100] ^= 0xFF
    state.write_bytes(bytes(data))
    (tmp_path / "checkpoints" / "step-2" / MANIFEST).unlink()
    with pytest.warns(RunWarning) as caught:
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1"
    message = str(caught[0].message)
    assert "step-3 is damaged: training_state.pt does not match its sha256" in message
    assert "step-2 is damaged: no manifest.json (incomplete)" in message


def test_no_intact_checkpoint_means_starting_over(tmp_path):
    save_steps(tmp_path, [1])
    (tmp_path / "checkpoints" / "step-1" / "state.json").unlink()
    with pytest.warns(RunWarning, match="state.json is missing; no intact checkpoint, starting from step 0"):
        assert latest_checkpoint(tmp_path) is None


def test_an_intact_checkpoint_is_taken_without_a_warning(tmp_path):
    save_steps(tmp_path, [1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-2"


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint_as_it_was(tmp_path, monkeypatch):
    save_steps(tmp_path, [1])
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step-1").iterdir()}
    real = checkpoint.write_synced

    def full_disk(path, data):
        if path.name == "training_state.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint, "write_synced", full_disk)
    with pytest.raises(OSError) as err:
        save_steps(tmp_path, [2], keep_last=1)
    assert err.value.errno == errno.ENOSPC
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-1"]  # no half-written folder
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step-1").iterdir()} == before
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1"
