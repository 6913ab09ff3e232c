"""Encode each distinct prompt once and run all of its responses on its KV cache.

On-policy methods sample n responses per prompt and score every (prompt + response) row, so the
prompt, often the longest part (OPSD's privileged context), is encoded n times. Here the rows are
grouped by identical prompt; each distinct prompt runs once (`use_cache=True`), its keys and
values are indexed out to the group's rows (an index, so the gradients of all n responses flow
back into the one prompt pass), and the responses run on that cache, positions continuing after
their own prompt:

    prompt pass    P_g right-padded to L          -> h_P [G, L, H],  K, V [G, heads, L, d]
    response pass  y_i[:-1] on K, V[g(i)]         -> h_y [B, R, H],  positions len(P_g) + j
                   (all of y_i with several processes, so that the pass always runs)
    state predicting y_i[0] = h_P[g(i), len(P_g) - 1];  y_i[j], j >= 1: h_y[i, j - 1]

The padded prompt slots stay in the cache, hidden by the response pass's attention mask (the
prompt pass needs none: causal attention never lets a real position see the pads after it), so
the states equal the row-by-row forward (`final_hidden`) up to float summation order.
"""

from __future__ import annotations

import inspect

import torch
from rich.console import Console

from trajdistill import UserError
from trajdistill.models.backbone import base_causal_lm, final_hidden
from trajdistill.models.buckets import Bucketing, several_processes

console = Console(stderr=True)


class PrefixSharingUnsupported(RuntimeError):
    """The model's forward or cache cannot run responses on an expanded prompt cache."""


class LengthDependentRope(PrefixSharingUnsupported, UserError):
    """The model's rotary frequencies depend on the length of the sequence it runs on."""


# RoPE types whose frequencies are recomputed from the longest position of each forward
# (transformers' `dynamic_rope_update`: "dynamic" NTK scaling past the original context, "longrope"
# switching factor sets there; "su" is longrope's old name in Phi-3 configs). The prompt pass (its
# own length) and the response pass (prompt + response) would then rotate with different
# frequencies than one pass over the whole row. An 8-token probe cannot see it: the switch happens
# only past `original_max_position_embeddings`.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope", "su")


def _length_dependent(kind) -> bool:
    return isinstance(kind, str) and ("dynamic" in kind or kind in _LENGTH_DEPENDENT_ROPE)


def length_dependent_rope(model) -> str | None:
    """Where the model's config (or rotary module) asks for length-dependent RoPE, as
    `config.field.rope_type = 'kind'`; None for RoPE whose frequencies are fixed (default, linear, yarn,
    llama3, ...)."""
    inner = base_causal_lm(model)
    config = getattr(inner, "config", None)
    configs = [config] if config is not None else []
    text = getattr(config, "get_text_config", None)
    if callable(text) and text() is not config:
        configs.append(text())
    for cfg in configs:
        for field in ("rope_parameters", "rope_scaling"):
            value = getattr(cfg, field, None)
            if not isinstance(value, dict):
                continue
            # one dict, or one per attention type ({"full_attention": {...}, "sliding_attention": {...}})
            entries = [(field, value)] + [(f"{field}.{k}", v) for k, v in value.items() if isinstance(v, dict)]
            for path, params in entries:
                for key in ("rope_type", "type"):
                    if _length_dependent(params.get(key)):
                        return f"config.{path}.{key} = {params[key]!r}"
    for name, module in inner.named_modules():  # a rotary module built from elsewhere
        kinds = getattr(module, "rope_type", None)
        for kind in (kinds.values() if isinstance(kinds, dict) else [kinds]):
            if _length_dependent(kind):
                return f"{name or type(inner).__name__}.rope_type = {kind!r}"
    return None


def _refuse_length_dependent_rope(model, who: str = "model") -> None:
    field = length_dependent_rope(model)
    if field is not None:
        raise LengthDependentRope(
            f"prefix sharing ({who}) cannot run this model: {field} makes its rotary "
            "frequencies depend on the sequence length, so a prompt encoded alone would not match the "
            "whole row; set speed.share_prefix to auto (falls back to whole rows) or off")


def group_rows(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Distinct prompts in order of first appearance, and each row's index among them."""
    index: dict[tuple[int, ...], int] = {}
    group_of = [index.setdefault(tuple(p), len(index)) for p in prompts]
    return [list(p) for p in index], group_of


def cache_argument(model) -> str:
    """The keyword the model's forward takes a KV cache by (`cache` from transformers 5.x on)."""
    params = inspect.signature(base_causal_lm(model).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            if "position_ids" not in params:
                break
            return name
    raise PrefixSharingUnsupported(f"{type(base_causal_lm(model)).__name__}.forward takes no KV cache "
                                   "and position_ids")


def _right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def shared_prefix_hidden(model, prompts: list[list[int]], responses: list[list[int]], device,
                         pad_id: int = 0, bucketing: Bucketing | None = None) -> torch.Tensor:
    """Final hidden states `[N, H]` at the positions predicting every response token, rows in
    order and tokens in order within a row (the order of `collate`'s `rows`/`cols`).

    Each distinct prompt is encoded once. Gradients flow as in the unshared forward when grad is
    enabled. `pad_id` only fills masked slots. With `bucketing`, the response pass runs in groups
    of responses of similar length, each on its own copy of its rows' prompt keys and values.
    """
    if any(len(r) == 0 for r in responses):
        raise ValueError("every sequence needs at least one response token")
    _refuse_length_dependent_rope(model)
    key = cache_argument(model)
    distinct, group_of = group_rows(prompts)
    p_ids, p_mask = _right_padded(distinct, pad_id)
    # No padding mask in the prompt pass: the pads sit after each prompt, where causal attention
    # keeps every real position from seeing them, so the real states are the masked pass's, and
    # attention takes its causal kernel (1.6x faster than an explicit mask at 1,200 tokens).
    # The pads' own states and keys are never read: the response pass masks them.
    out = model(input_ids=p_ids.to(device), attention_mask=None, use_cache=True,
                output_hidden_states=True, logits_to_keep=1)
    prompt_states = out.hidden_states[-1]  # [G, L, H]
    cache = getattr(out, key, None)
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        raise PrefixSharingUnsupported(f"the model's cache ({type(cache).__name__}) is not a plain DynamicCache "
                                       "(sliding-window or other layers may drop prompt keys)")
    prompt_len = p_mask.sum(1)
    group = torch.tensor(group_of, dtype=torch.long)
    last = prompt_states[torch.arange(len(distinct), device=device), (prompt_len - 1).to(device)]  # [G, H]

    # The last token predicts nothing, so it is not fed, except with several processes: there
    # every micro-batch must run the response pass (FSDP gathers the weights in every forward), even
    # one whose responses are all one token long; the extra position's state is not read.
    feed = [list(r) if several_processes() else r[:-1] for r in responses]
    if max(len(r) for r in feed) == 0:
        return last[group.to(device)]
    groups = (bucketing.groups([len(r) for r in feed]) if bucketing is not None else None) \
        or [list(range(len(feed)))]
    kv = [(layer.keys, layer.values) for layer in layers] if len(groups) > 1 else None
    parts, start_of = [last], dict.fromkeys(range(len(feed)), 0)
    offset = len(distinct)
    for rows in groups:
        index = torch.tensor(rows, dtype=torch.long)
        if kv is None:
            part_cache = cache
            part_cache.batch_select_indices(group.to(device))  # K, V[g(i)] by indexing: differentiable
        else:  # a fresh cache per group, indexed from the one prompt pass (gradients reach it)
            part_cache = type(cache)(config=base_causal_lm(model).config)
            for n, (k, v) in enumerate(kv):
                part_cache.update(k[group[index].to(device)], v[group[index].to(device)], n)
        r_ids, r_mask = _right_padded([feed[i] for i in rows], pad_id)
        width = r_ids.shape[1]
        if width == 0:  # one-token responses: only the prompt's last state is needed
            continue
        mask = torch.cat([p_mask[group[index]], r_mask], dim=1)
        positions = prompt_len[group[index]][:, None] + torch.arange(width)[None, :]
        out = model(input_ids=r_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    use_cache=True, output_hidden_states=True, logits_to_keep=1, **{key: part_cache})
        states = out.hidden_states[-1]  # [b, R, H]
        parts.append(states.reshape(-1, states.shape[-1]))
        for k, i in enumerate(rows):
            start_of[i] = offset + k * width
        offset += states.shape[0] * width

    flat = torch.cat(parts)
    index = []
    for i, (g, r) in enumerate(zip(group_of, responses)):
        index.append(g)
        index.extend(start_of[i] + j for j in range(len(r) - 1))
    return flat[torch.tensor(index, dtype=torch.long, device=device)]


def _slots(lengths: list[int], bucketing: Bucketing | None) -> int:
    """Positions computed for rows of these lengths: one padded forward, or one per length group."""
    groups = (bucketing.groups(lengths) if bucketing is not None else None) or [range(len(lengths))]
    return sum(len(g) * max((lengths[i] for i in g), default=0) for g in groups)


def padding(prompts: list[list[int]], responses: list[list[int]], shared: bool,
            bucketing: Bucketing | None = None) -> tuple[int, int]:
    """`(padded, computed)` token positions of the forward over these rows: right-padded rows of
    prompt + response, or, shared, the distinct prompts' pass plus the responses' pass; with
    `bucketing`, each length group padded to its own longest row."""
    if not shared:
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
        computed = _slots(lengths, bucketing)
        return computed - sum(lengths), computed
    distinct, _ = group_rows(prompts)
    feed = [len(r) if several_processes() else len(r) - 1 for r in responses]  # as shared_prefix_hidden feeds
    prompt_slots = len(distinct) * max((len(p) for p in distinct), default=0)
    response_slots = _slots(feed, bucketing)
    real = sum(len(p) for p in distinct) + sum(feed)
    return prompt_slots + response_slots - real, prompt_slots + response_slots


def unshared_hidden(model, prompts: list[list[int]], responses: list[list[int]], device,
                    pad_id: int = 0) -> torch.Tensor:
    """The row-by-row forward `shared_prefix_hidden` must reproduce (same output layout)."""
    rows = [p + r for p, r in zip(prompts, responses)]
    ids, mask = _right_padded(rows, pad_id)
    states = final_hidden(model, ids.to(device), mask.to(device))
    r = [i for i, resp in enumerate(responses) for _ in resp]
    c = [len(p) - 1 + j for p, resp in zip(prompts, responses) for j in range(len(resp))]
    return states[torch.tensor(r, device=device), torch.tensor(c, device=device)]


class PrefixSharing:
    """Whether a model's rows go through `shared_prefix_hidden` (`speed.share_prefix`).

    off: never. on: always (a model that cannot raises; length-dependent RoPE at the first call,
    naming the config field). auto: only for batches where some prompt repeats, and only if, on
    first use, the config's RoPE does not depend on the sequence length and a small probe (prompts
    of two lengths, responses of three) runs and gives the unshared states; else the unshared path,
    with the reason logged once.

    In a multi-process run, auto shares every micro-batch, repeated prompts or not (the shared path
    is exact for prompts of one row too): DDP broadcasts buffers and FSDP gathers weights in
    forwards, so the processes must take the same path, and a choice by each one's own prompts
    would differ between them. The choice needs no collective of its own.
    """

    def __init__(self, mode: str = "auto", who: str = "model"):
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"share_prefix must be auto, on or off, not {mode!r}")
        self.mode = mode
        self.who = who
        self.works: bool | None = None

    def use(self, model, prompts: list[list[int]]) -> bool:
        if self.mode == "off":
            return False
        if self.mode == "on":
            if self.works is None:
                _refuse_length_dependent_rope(model, self.who)
                self.works = True
            return True
        if len({tuple(p) for p in prompts}) == len(prompts) and not several_processes():
            return False  # groups of one: nothing to share
        inner = getattr(model, "module", model)
        if self.works is None and (field := length_dependent_rope(model)) is not None:
            self.works = False
            console.print(f"prefix sharing ({self.who}): off, {field} (RoPE frequencies that depend on "
                          "the sequence length)")
        if self.works is None and getattr(inner, "is_gradient_checkpointing", False) and inner.training:
            # transformers turns the cache off while checkpointing in training mode
            self.works = False
            console.print(f"prefix sharing ({self.who}): off, model.gradient_checkpointing disables the prompt cache")
        if self.works is None:
            self.works, reason = probe(model, prompts[0])
            console.print(f"prefix sharing ({self.who}): {'on' if self.works else 'off'}, {reason}")
        return self.works


@torch.no_grad()
def probe(model, tokens: list[int]) -> tuple[bool, str]:
    """Run a tiny batch both ways (eval mode, no grad, outside any DDP wrapper); `(works, why)`."""
    inner = getattr(model, "module", model)
    device = next(inner.parameters()).device
    toks = (list(tokens) * 8)[:8]
    prompts = [toks[:5], toks[:5], toks[:3]]
    responses = [toks[5:8], toks[5:6], toks[3:5]]
    was_training = inner.training
    inner.eval()
    try:
        shared = shared_prefix_hidden(inner, prompts, responses, device)
        plain = unshared_hidden(inner, prompts, responses, device)
    except Exception as err:  # noqa: BLE001 - any failure means: do not share
        return False, f"the model cannot run on an expanded prompt cache ({type(err).__name__}: {err})"
    finally:
        inner.train(was_training)
    scale = max(1.0, float(plain.abs().max()))
    tol = 1e-3 if plain.dtype in (torch.float32, torch.float64) else 5e-2
    diff = float((shared.float() - plain.float()).abs().max())
    if not diff <= tol * scale:
        return False, f"a probe batch gave different states ({diff:.2g} max abs difference)"
    return True, "each distinct prompt is encoded once per micro-batch"
