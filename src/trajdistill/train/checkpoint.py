"""Checkpoints that make `--resume` continue exactly where a run stopped.

`checkpoints/step-N/` holds the trainable weights (safetensors), optimizer and scheduler state, the
RNG states of every generator, `state.json` (step, data position) and, written last,
`manifest.json`: the size and sha256 of every other file. It is written to a temporary folder and
renamed, so a run killed mid-write leaves either the old or the new checkpoint; the manifest
catches what renaming cannot (a file truncated or altered afterwards, a copy that stopped short).
`latest_checkpoint` passes over a checkpoint that does not match its manifest, with a warning,
and resumes from the newest one that does.

Every file is serialised in memory and written by `write_synced` (written, flushed, fsynced), so a
full disk raises `OSError(ENOSPC)` right there: the native writers of torch and safetensors do not
reliably report a failed write. The price is one in-memory copy of the state while it is saved.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from trajdistill import RunWarning
from trajdistill.models.backbone import base_causal_lm

MANIFEST = "manifest.json"


def trainable_state(model) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict, keep_last: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=root))
    try:
        blob = io.BytesIO()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   blob)
        files = {"trainable.safetensors": save(trainable_state(model)), "training_state.pt": blob.getvalue(),
                 "state.json": json.dumps({"step": step, **state}, indent=2).encode()}
        for name, data in files.items():
            write_synced(tmp / name, data)
        manifest = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                    for name, data in files.items()}
        write_synced(tmp / MANIFEST, json.dumps({"files": manifest}, indent=2).encode())
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(list_checkpoints(run_dir))[:-keep_last]:
        shutil.rmtree(old[1], ignore_errors=True)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_synced(path: Path, data: bytes) -> None:
    """Write, flush and fsync one file; a full disk raises OSError here, not later."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def checkpoint_damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, or None when every file matches its manifest."""
    try:
        files = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (incomplete)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} ({type(err).__name__})"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    found = []
    for path in root.glob("step-*") if root.is_dir() else []:
        number = path.name.split("-")[1]
        if path.is_dir() and number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that matches its manifest; damaged newer ones are named in a warning."""
    damaged = []
    for _, path in reversed(list_checkpoints(run_dir)):
        reason = checkpoint_damage(path)
        if reason is None:
            if damaged:
                warnings.warn(RunWarning(f"{'; '.join(damaged)}; resuming from {path.name}"), stacklevel=2)
            return path
        damaged.append(f"checkpoint {path} is damaged: {reason}")
    if damaged:
        warnings.warn(RunWarning(f"{'; '.join(damaged)}; no intact checkpoint, starting from step 0"), stacklevel=2)
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    weights = load_file(str(path / "trainable.safetensors"))
    target = getattr(model, "module", model)
    missing = set(weights) - {n for n, _ in target.named_parameters()}
    if missing:
        raise ValueError(f"checkpoint {path} has weights the model lacks: {sorted(missing)[:3]}")
    target.load_state_dict(weights, strict=False)
    blob = torch.load(path / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "state.json").read_text())


def export_model(model, tokenizer, out_dir: Path) -> Path:
    """A merged model directory that plain `transformers` loads (LoRA merged into the weights)."""
    out_dir = Path(out_dir)
    model = getattr(model, "module", model)
    if hasattr(model, "merge_and_unload"):
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
    else:
        merged = base_causal_lm(model)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
