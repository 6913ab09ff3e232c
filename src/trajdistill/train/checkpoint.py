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

Under FSDP every process holds a shard: saving gathers whole tensors (every process must call
`save_checkpoint`, `export_model`), process 0 writes them; loading gives each process its shard back.
The files are the same as a single process writes, so a sharded run resumes on one process and back.
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
import torch.distributed as dist
from safetensors.torch import load_file, save

from trajdistill import RunWarning
from trajdistill.models.backbone import base_causal_lm
from trajdistill.train.distributed import is_distributed

MANIFEST = "manifest.json"


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "module", model), FSDPModule)


def resharded(model) -> None:
    """Put every FSDP2 unit of `model` back to its sharded parameters. A unit that keeps its
    gathered weights after forward (the root, the LM head's) stays gathered after a forward with
    no backward (generation, scoring, a step whose rollouts were all filtered out), and its
    modules then list the gathered tensors instead of the sharded parameters the optimizer holds,
    so torch's state-dict functions cannot match them."""
    from torch.distributed.fsdp import FSDPModule

    for module in getattr(model, "module", model).modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _is_main() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Whole trainable tensors on CPU, on every process (under FSDP each is all-gathered in turn)."""
    from torch.distributed.tensor import DTensor

    model = getattr(model, "module", model)
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().contiguous()
            for n, p in model.named_parameters() if p.requires_grad}


def _full_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state dict; under FSDP whole tensors keyed by parameter name, on process 0."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_full_options())


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


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict,
                    keep_last: int = 2) -> Path | None:
    """Every process calls it (FSDP gathers); process 0 writes and returns the folder."""
    if is_sharded(model):
        resharded(model)
    weights, optim = trainable_state(model), optimizer_state(model, optimizer)
    if not _is_main():
        return None
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=root))
    try:
        blob = io.BytesIO()
        torch.save({"optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   blob)
        files = {"trainable.safetensors": save(weights), "training_state.pt": blob.getvalue(),
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
    """Every process reads the files and keeps its own shard of them."""
    weights = load_file(str(path / "trainable.safetensors"))
    target = getattr(model, "module", model)
    if is_sharded(model):
        resharded(model)
    missing = set(weights) - {n for n, _ in target.named_parameters()}
    if missing:
        raise ValueError(f"checkpoint {path} has weights the model lacks: {sorted(missing)[:3]}")
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(target, weights, options=_full_options(strict=False))
    else:
        target.load_state_dict(weights, strict=False)
    blob = torch.load(path / "training_state.pt", weights_only=False)
    load_optimizer_state(model, optimizer, blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "state.json").read_text())


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Every weight of the model, whole; under FSDP gathered to CPU on process 0 (empty elsewhere)."""
    if not is_sharded(model):
        return getattr(model, "module", model).state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def merge_lora(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` of a peft model as the plain model's state dict, each LoRA delta folded into its
    base weight: `W' = W + (alpha / r) B A`. New tensors only; `state` is left untouched."""
    peft_model = getattr(model, "module", model)
    if not hasattr(peft_model, "get_base_model"):
        return dict(state)
    from peft.tuners.lora import LoraLayer

    out = dict(state)
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if module.use_dora.get(adapter) or not isinstance(module.base_layer, torch.nn.Linear):
                raise NotImplementedError(f"exporting {name}: only plain LoRA on Linear layers merges here")
            a = out.pop(f"{name}.lora_A.{adapter}.weight").float()
            b = out.pop(f"{name}.lora_B.{adapter}.weight").float()
            delta = (b @ a) * module.scaling[adapter]
            key = f"{name}.base_layer.weight"
            base = out[key]
            out[key] = (base.float() + (delta.T if module.fan_in_fan_out else delta)).to(base.dtype)
    prefix = "base_model.model."
    return {k.removeprefix(prefix).replace(".base_layer.", "."): v for k, v in out.items() if ".lora_" not in k}


def export_model(model, tokenizer, out_dir: Path) -> Path | None:
    """A merged model directory that plain `transformers` loads (LoRA merged into the weights).

    Every process calls it (FSDP gathers the shards); process 0 writes. The LoRA deltas are folded
    into the gathered state dict, so no second copy of the model is built.
    """
    out_dir = Path(out_dir)
    state = full_state_dict(model)
    if not _is_main():
        return None
    merged = merge_lora(model, state)
    del state
    base = base_causal_lm(model)
    if getattr(base.config, "tie_word_embeddings", False):  # a gathered state holds the tied head twice
        head = base.get_output_embeddings()
        merged.pop(next(f"{n}.weight" for n, m in base.named_modules() if m is head), None)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        base_causal_lm(model).save_pretrained(tmp, state_dict=merged, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
