"""trajdistill's own decoding loop over any `transformers` causal LM (or peft model wrapping one).

Three things make it faster than HF `generate` for rollouts:
- **Each prompt is encoded once** for its n samples: one prefill per distinct prompt, its KV cache
  repeated n times (HF generate prefills every copy).
- **Finished rows leave the batch**: after each step the cache keeps only the rows still decoding,
  so a batch whose answers end early does not run at full width until its longest one stops.
- **Sampling in the top-k set**: temperature, top-k and top-p applied to the k candidates instead
  of the whole vocabulary, then one uniform per row from the row's own generator.

It draws the same tokens as `HFSampler` with per-row seeds (same warpers in the same order, the same
inverse-CDF over the vocabulary order, the same generator stream per row), and its greedy outputs
are HF's (tests compare both in float64). Where it cannot run (FSDP-sharded weights, which need
every process to take the same number of steps), it hands the call to `HFSampler` and logs why.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from rich.progress import Progress
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from trajdistill.models.shared_prefix import PrefixSharingUnsupported, base_causal_lm, cache_argument
from trajdistill.models.packed import packed_linears
from trajdistill.records import Rollout
from trajdistill.rollout.hf import HFSampler, inverse_cdf_draw, left_padded
from trajdistill.rollout.sampler import SamplingParams

log = logging.getLogger(__name__)


def choose_tokens(scaled: torch.Tensor, params: SamplingParams, generators: list[torch.Generator]) -> torch.Tensor:
    """Next token per row from `scaled` (logits / temperature): argmax when greedy, else a draw after
    top-k and top-p (HF's warpers' semantics, in HF's order), by inverse CDF over the kept tokens in
    vocabulary order with one uniform from each row's generator."""
    if params.greedy:
        return scaled.argmax(dim=-1)
    vocab = scaled.shape[-1]
    if params.top_k or params.top_p < 1.0:
        k = min(params.top_k, vocab) if params.top_k else vocab
        values, index = scaled.topk(k, dim=-1)  # descending
        if params.top_p < 1.0:
            probs = torch.softmax(values, dim=-1)
            above = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each candidate
            drop = above >= params.top_p
            drop[:, 0] = False  # HF keeps at least one token
            values = values.masked_fill(drop, float("-inf"))
        order = index.argsort(dim=-1)  # candidates in vocabulary order, as HF's CDF runs
        index = index.gather(1, order)
        values = values.gather(1, order)
    else:
        index = None
        values = scaled
    pick = inverse_cdf_draw(values, generators)
    return pick if index is None else index.gather(1, pick[:, None]).squeeze(1)


class _PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in a buffer with room for every position of the
    call: `update` writes the new positions in place, where `DynamicLayer` concatenates (a copy of
    the whole layer's cache at every decoding step)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._keys = self._values = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._keys is None:
            batch, heads, _, dim = key_states.shape
            self._keys = key_states.new_empty((batch, heads, self.capacity, dim))
            self._values = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
        end = self.length + key_states.shape[-2]
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _expose(self) -> None:
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._keys is not None:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._expose()


def new_cache(model, capacity: int) -> DynamicCache:
    """A KV cache for one decoding call: preallocated layers where every layer is a plain full
    attention layer, else (sliding windows, hybrid models) transformers' own."""
    cache = DynamicCache(config=base_causal_lm(model).config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


class NativeSampler(HFSampler):
    """Batched, prefix-shared, compacting decoding with sampler log-probs (see the module doc).
    `batch_size` bounds the rows decoded together (prompts x samples)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 64, progress: bool = True, context=None,
                 packed: str = "auto"):
        super().__init__(model, tokenizer, batch_size=batch_size, progress=progress, context=context, packed=packed)
        self._fallback_logged = False

    def sample(
        self, prompts: Sequence[list[int]], params: SamplingParams, problem_ids: Sequence[str] | None = None
    ) -> list[Rollout]:
        why = self._unsupported()
        if why:
            if not self._fallback_logged:
                log.info("native sampler: %s; sampling with HF generate", why)
                self._fallback_logged = True
            return super().sample(prompts, params, problem_ids)
        ids = list(problem_ids) if problem_ids is not None else [str(i) for i in range(len(prompts))]
        jobs = [(p, j) for p in range(len(prompts)) for j in range(params.n)]
        seeds = self._row_seeds(len(jobs), params)
        # Similar lengths share a call (little padding), and a prompt's samples stay together so its
        # prefill is shared; the order is restored at the end.
        order = sorted(range(len(jobs)), key=lambda i: (len(prompts[jobs[i][0]]), jobs[i][0]))
        results: list[Rollout] = [None] * len(jobs)  # type: ignore[list-item]
        was_training = self.model.training
        self.model.eval()
        try:
            with self.context(), packed_linears(self.model, self.packed), \
                    Progress(transient=True, disable=not self.progress) as bar:
                task = bar.add_task("sampling", total=len(jobs))
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    made = self._decode([prompts[jobs[i][0]] for i in chunk], params,
                                        None if seeds is None else [seeds[i] for i in chunk])
                    for i, rollout in zip(chunk, made):
                        rollout.problem_id, rollout.sample_index = ids[jobs[i][0]], jobs[i][1]
                        results[i] = rollout
                    bar.advance(task, len(chunk))
        finally:
            self.model.train(was_training)
        return results

    def _unsupported(self) -> str | None:
        """Why this model cannot use the native loop, or None."""
        if self._sharded():
            return "FSDP-sharded weights need every process to take the same steps"
        try:
            self._cache_key = cache_argument(self.model)
        except PrefixSharingUnsupported as exc:
            return str(exc)
        return None

    @staticmethod
    def _row_seeds(rows: int, params: SamplingParams) -> list[int] | None:
        """One seed per (prompt, sample), in output order: `prompt_seeds[i] + j` as HF's per-row path,
        else derived from `seed` (or from torch's global generator when there is none)."""
        if params.greedy:
            return None
        if params.prompt_seeds is not None:
            return [params.prompt_seeds[i // params.n] + i % params.n for i in range(rows)]
        base = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)))
        return [base * 1_000_003 + i for i in range(rows)]

    def _prefill(self, prompts: list[list[int]], cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode left-padded `prompts` into `cache`; their last logits and attention mask."""
        input_ids, attention = (t.to(self.device) for t in left_padded(prompts, self._pad_id()))
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **{self._cache_key: cache})
        return out.logits[:, -1], attention

    @torch.no_grad()
    def _decode(self, rows: list[list[int]], params: SamplingParams, seeds: list[int] | None) -> list[Rollout]:
        """One rollout per row of `rows` (prompt token ids); identical prompts are encoded once."""
        device = self.device
        index: dict[tuple[int, ...], int] = {}
        group_of = torch.tensor([index.setdefault(tuple(r), len(index)) for r in rows]).to(device)
        cache = new_cache(self.model, max(len(r) for r in rows) + params.max_new_tokens)
        logits, attention = self._prefill([list(p) for p in index], cache)
        if len(index) < len(rows):  # each prompt's cache and last logits, once per row of it
            cache.batch_select_indices(group_of)
        logits, attention = logits[group_of], attention[group_of]
        total = len(rows)
        generators = [] if seeds is None else [torch.Generator(device=device).manual_seed(s % 2**63) for s in seeds]
        # Rows that stop are padded after their EOS; `_to_rollout` cuts them there, as for HF's.
        tokens = torch.full((total, params.max_new_tokens), self._pad_id(), dtype=torch.long)
        logprobs = torch.zeros((total, params.max_new_tokens))
        alive = torch.arange(total)  # original row of each row still in the batch
        next_position = attention.sum(-1)
        eos = self.tokenizer.eos_token_id if params.stop_at_eos else None
        temperature = params.temperature if params.temperature > 0 else 1.0
        for step in range(params.max_new_tokens):
            scaled = logits.float() / temperature
            chosen = choose_tokens(scaled, params, [generators[int(r)] for r in alive] if generators else [])
            lp = scaled.gather(1, chosen[:, None]).squeeze(1) - torch.logsumexp(scaled, dim=-1)
            tokens[alive, step] = chosen.cpu()
            logprobs[alive, step] = lp.cpu()
            done = (chosen == eos).cpu() if eos is not None else torch.zeros(len(alive), dtype=torch.bool)
            if step + 1 == params.max_new_tokens or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                on_device = keep.to(device)
                cache.batch_select_indices(on_device)
                alive, chosen = alive[keep], chosen[on_device]
                attention, next_position = attention[on_device], next_position[on_device]
            attention = torch.cat([attention, attention.new_ones((len(alive), 1))], dim=1)
            logits = self.model(input_ids=chosen[:, None], attention_mask=attention,
                                position_ids=next_position[:, None], use_cache=True, logits_to_keep=1,
                                **{self._cache_key: cache}).logits[:, -1]
            next_position = next_position + 1
        return [self._to_rollout(rows[row], tokens[row], logprobs, row, params) for row in range(total)]
