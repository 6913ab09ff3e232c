"""oneDNN-packed linear weights for the passes that need no gradient, on CPU in float32.

Sampling and teacher scoring multiply activations by every weight matrix without a gradient. On a
CPU, `F.linear` hands that to MKL's sgemm, which is slow for the few rows of a decoding step (8
rows: about 28 GFLOP/s on one core, where the weights can be read at ~20 GB/s). oneDNN's linear on
a weight reordered once into its blocked layout ran the same products 1.7x faster at 8 rows, 2.4x
for SmolLM2's LM head, and 1.05-1.15x at 200-1024 rows (one core of a 2-core AVX2 machine, fp32);
whole rollouts: `benchmarks/sampling.py`.

`packed_linears(model)` swaps every `nn.Linear` of the model to that path for the duration of a
`with` block, and a peft LoRA layer to one product with its merged weight `W + s B A` (instead of
the base product plus two thin adapter products). Wherever the packed path does not apply
(gradient needed, autocast on, another dtype or device, sharded weights, adapters off or of
another kind) the call goes to the layer's own forward. A packed copy is made on first use and
kept until a weight it depends on changes (its version counter moves: an optimizer step, a
checkpoint load), so frozen base weights are packed once per run and a LoRA layer's merged weight
once per optimizer step. Memory: one more copy of the weights (two with LoRA: base and merged).
Results equal `F.linear` up to float32 summation order.
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import torch
import torch.nn.functional as F


# Thinner matrices (LoRA's A and B) stay on `F.linear`: oneDNN's per-call overhead outweighs its
# gain there (measured: 8 rollouts x 64 tokens of a LoRA model took 8.0-8.5 s with them packed,
# 7.1-7.4 s without; 9.0-10.0 s with nothing packed).
MIN_SIDE = 64
_cache: dict[int, tuple] = {}  # id(weight) -> (weakref to it, its state when packed, packed copy)
_lora_cache: dict[int, tuple] = {}  # id(LoRA layer) -> (weakref, its weights' states, packed merged weight)
_PATCHED = "_trajdistill_packed"  # on a patched module: the fingerprints of its weights at block entry


def _fingerprint(weight: torch.Tensor) -> float:
    """A sum over about 1024 evenly spaced entries. Writes through `.data` (peft's `merge_adapter`)
    and fused optimizers change a weight without moving its version counter; they move this."""
    flat = weight.detach().reshape(-1)
    return float(flat[:: max(1, flat.numel() // 1024)].sum())


def _state(weight: torch.Tensor, fingerprint: float) -> tuple:
    return (weight._version, weight.data_ptr(), fingerprint)


def available() -> str | None:
    """Why the packed path cannot run in this torch build, or None."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN"
    if not (hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return "this torch build lacks oneDNN's packed linear ops"
    return None


def _cached(cache: dict, owner, state: tuple, make) -> torch.Tensor:
    """`cache`'s packed copy for `owner` (a weight or a LoRA layer), made anew by `make()` when the
    state it was made from differs; the entry goes when its owner does."""
    key = id(owner)
    entry = cache.get(key)
    if entry is None or entry[0]() is not owner:  # a new owner (ids are reused after death)
        weakref.finalize(owner, cache.pop, key, None)
        entry = None
    if entry is None or entry[1] != state:
        entry = (weakref.ref(owner), state, make())
        cache[key] = entry
    return entry[2]


def _packed(weight: torch.Tensor, fingerprint: float) -> torch.Tensor:
    return _cached(_cache, weight, _state(weight, fingerprint),
                   lambda: torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8))


def _product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x @ W.T + b` through oneDNN on `W` packed, for any leading shape of `x`."""
    bias = None if bias is None else bias.detach()
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _applies(module: torch.nn.Linear, x: torch.Tensor) -> bool:
    weight, bias = module.weight, module.bias
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False  # autocast computes in its own dtype
    return (x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu" and weight.device.type == "cpu"
            and type(weight) in (torch.Tensor, torch.nn.Parameter) and x.shape[-1] == weight.shape[1])


def _forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if not _applies(module, x):
        return F.linear(x, module.weight, module.bias)
    return _product(x, _packed(module.weight, getattr(module, _PATCHED)[0]), module.bias)


def _lora_weight(module) -> torch.Tensor | None:
    """The merged weight `W + sum_a s_a B_a A_a` of a peft LoRA linear layer in the state it is in
    (its active plain-LoRA adapters), or None where the layer computes something else (adapters
    off or already merged, DoRA and other variants, dropout in training, extra arguments)."""
    if module.disable_adapters or module.merged:
        return None
    names = [a for a in module.active_adapters if a in module.lora_A.keys()]
    if not names or any(a in getattr(module, "lora_variant", {}) for a in names):
        return None
    if module.training and any(not isinstance(module.lora_dropout[a], torch.nn.Identity) for a in names):
        return None
    base = module.base_layer.weight
    fingerprints = getattr(module, _PATCHED)
    key = (_state(base, fingerprints[base]),
           tuple((a, _state(module.lora_A[a].weight, fingerprints[module.lora_A[a].weight]),
                  _state(module.lora_B[a].weight, fingerprints[module.lora_B[a].weight]), float(module.scaling[a]))
                 for a in names))

    def merge() -> torch.Tensor:
        merged = base.detach().clone()
        for a in names:
            merged.addmm_(module.lora_B[a].weight.detach(), module.lora_A[a].weight.detach(),
                          alpha=float(module.scaling[a]))
        return torch.ops.mkldnn._reorder_linear_weight(merged, 8)

    return _cached(_lora_cache, module, key, merge)


def _lora_forward(module, original, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    base = module.base_layer
    if args or kwargs or type(base) is not torch.nn.Linear or not _applies(base, x) or (
            torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())):
        return original(x, *args, **kwargs)
    packed = _lora_weight(module)
    return original(x, *args, **kwargs) if packed is None else _product(x, packed, base.bias)


class _ByIdentity(dict):
    """Fingerprints of a LoRA layer's weights, looked up by the tensor itself (not by value)."""

    def __init__(self, pairs):
        super().__init__((id(w), fp) for w, fp in pairs)

    def __getitem__(self, weight):
        found = self.get(id(weight))
        return _fingerprint(weight) if found is None else found  # an adapter added inside the block


def _is_lora_linear(module) -> bool:
    base = getattr(module, "base_layer", None)
    return (type(base) is torch.nn.Linear and min(base.weight.shape) >= MIN_SIDE and hasattr(module, "lora_A")
            and hasattr(module, "lora_B") and hasattr(module, "scaling") and hasattr(module, "active_adapters"))


def packable(model) -> bool:
    """Whether any weight of `model` could take the packed path (float32 on CPU), and none is
    sharded: FSDP gathers a sharded layer's weights into the same tensors before every forward,
    which a packed copy would not follow."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    return (not any(isinstance(p, DTensor) for p in params)
            and any(p.dtype == torch.float32 and p.device.type == "cpu" for p in params))


@contextlib.contextmanager
def packed_linears(model, mode: str = "auto"):
    """Within the block, `model`'s linear layers multiply by oneDNN-packed weights where they need
    no gradient (see the module doc). mode `off`, a torch without oneDNN, or a model with no
    float32 CPU weights: nothing changes."""
    if mode not in ("auto", "off"):
        raise ValueError(f"packed_linear must be auto or off, not {mode!r}")
    if mode == "off" or available() is not None or not packable(model):
        yield
        return
    patched = []
    try:
        for module in model.modules():
            if hasattr(module, _PATCHED) or "forward" in vars(module):  # ours, or another wrapper's (hooks)
                continue
            if type(module) is torch.nn.Linear and min(module.weight.shape) >= MIN_SIDE:
                module.forward = functools.partial(_forward, module)
                setattr(module, _PATCHED, (_fingerprint(module.weight),))
            elif _is_lora_linear(module):  # LoRA: one product with the merged weight, not three
                module.forward = functools.partial(_lora_forward, module, module.forward)
                weights = [module.base_layer.weight] + [layer.weight for name in ("lora_A", "lora_B")
                                                        for layer in getattr(module, name).values()]
                setattr(module, _PATCHED, _ByIdentity((w, _fingerprint(w)) for w in weights))
            else:
                continue
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
            delattr(module, _PATCHED)
