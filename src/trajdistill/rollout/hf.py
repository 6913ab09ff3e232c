"""Hugging Face `generate` backend: batched, left-padded, KV-cached, with sampler log-probs."""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from rich.progress import Progress

from trajdistill.models.packed import packed_linears
from trajdistill.records import Rollout
from trajdistill.rollout.sampler import SamplingParams


class _LogprobRecorder:
    """Logits processor that records log p(chosen token) under softmax(logits / T).

    It runs first in the processor list, so it sees the raw logits, before top-k / top-p.
    The token chosen at step t is only known at step t + 1 (or after the loop), so it keeps one
    [B, V] log-softmax at a time instead of all of them.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature if temperature > 0 else 1.0
        self.previous: torch.Tensor | None = None
        self.chosen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._collect(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _collect(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.chosen.append(self.previous.gather(1, tokens[:, None]).squeeze(1))

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        self._collect(last_tokens)
        self.previous = None
        return torch.stack(self.chosen, dim=1) if self.chosen else torch.zeros(len(last_tokens), 0)


def inverse_cdf_draw(logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Per row, the column drawn from softmax(`logits`) by inverse CDF (columns in their order), with
    one uniform from that row's generator."""
    cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)
    u = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    chosen = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
    return chosen.clamp(max=logits.shape[-1] - 1)


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of `prompts`, left-padded to the longest."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention[row, width - len(prompt) :] = 1
    return input_ids, attention


class _RowSeededSampler:
    """Draws every row's next token from its own generator, after HF's own temperature, top-k and
    top-p warpers, and leaves only that token possible (the decoding itself is then greedy)."""

    def __init__(self, params: SamplingParams, seeds: list[int], device: torch.device):
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers = [TemperatureLogitsWarper(params.temperature)]
        if params.top_k:
            self.warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(params.top_p))
        self.generators = [torch.Generator(device=device).manual_seed(s % 2**63) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        warped = scores.float()
        for warper in self.warpers:
            warped = warper(input_ids, warped)
        # Inverse CDF: one uniform per row from the row's generator (a multinomial call per row is
        # ~16x slower over a 49k vocabulary).
        chosen = inverse_cdf_draw(warped, self.generators)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen[:, None], 0.0)


# Every `GenerationConfig` option that changes which token is drawn, its log-prob, when decoding
# stops or how many sequences come back, at the value that leaves sampling as `SamplingParams` says.
# `generate` fills any option left at None from the model's own `generation_config` (a checkpoint's
# `generation_config.json`: Qwen2.5-Instruct ships repetition_penalty 1.05, others top_k 20,
# temperature 0.7, several EOS ids), and the penalties run before `_LogprobRecorder`, so they would
# change the tokens drawn and the log-probs recorded. Options whose neutral value is None
# (bad_words_ids, suppress_tokens, forced BOS/EOS, ...) cannot be stated here: for those the model's
# own config is blanked during the call (`_model_generation_defaults_off`).
NEUTRAL_GENERATION_OPTIONS = {
    # min_new_tokens: None, not 0 (both set draws a warning on every call); the model's is blanked
    "max_length": None, "min_length": 0, "min_new_tokens": None, "max_time": None, "stop_strings": None,
    "early_stopping": False, "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0,
    "num_return_sequences": 1, "penalty_alpha": None, "dola_layers": None, "guidance_scale": None,
    "typical_p": 1.0, "min_p": None, "top_h": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "length_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "force_words_ids": None, "constraints": None, "sequence_bias": None, "renormalize_logits": False,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "remove_invalid_values": False,
    "exponential_decay_length_penalty": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "forced_decoder_ids": None, "watermarking_config": None, "token_healing": False,
    "prompt_lookup_num_tokens": None, "assistant_early_exit": None, "low_memory": None,
    "output_scores": False, "output_logits": False, "return_dict_in_generate": False,
}


def _explicit_generation_options(blank, chosen: dict) -> dict:
    """`chosen` plus every neutral option, restricted to the fields this transformers version's
    `GenerationConfig` (`blank`, a default instance) has."""
    return {k: v for k, v in {**NEUTRAL_GENERATION_OPTIONS, **chosen}.items() if hasattr(blank, k)}


@contextlib.contextmanager
def _model_generation_defaults_off(model):
    """While `generate` runs, every module of `model` that owns a `generation_config` (the HF model
    inside a peft/FSDP wrapper) holds a blank one, so nothing of the checkpoint's merges into ours
    (transformers >= 5 fills the None options from it; 4.x also overrides options equal to the global
    defaults). Restored afterwards, also on error."""
    from transformers import GenerationConfig

    swapped = [(m, vars(m)["generation_config"]) for m in model.modules()
               if isinstance(vars(m).get("generation_config"), GenerationConfig)]
    for module, _ in swapped:
        module.generation_config = GenerationConfig()
    try:
        yield
    finally:
        for module, original in swapped:
            module.generation_config = original


class HFSampler:
    """Sampler over any `transformers` causal LM (or peft model wrapping one)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32, progress: bool = True, context=None,
                 packed: str = "auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.context = context or contextlib.nullcontext
        self.packed = packed  # `speed.packed_linear`

    def sync(self, model, version: int | None = None) -> None:
        """Nothing to do: `generate` runs on the live weights."""

    def close(self) -> None:
        """Nothing to release."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sample(
        self, prompts: Sequence[list[int]], params: SamplingParams, problem_ids: Sequence[str] | None = None
    ) -> list[Rollout]:
        ids = list(problem_ids) if problem_ids is not None else [str(i) for i in range(len(prompts))]
        jobs = [(p, j) for p in range(len(prompts)) for j in range(params.n)]
        # Similar lengths share a batch, so left padding stays small; order is restored at the end.
        order = sorted(range(len(jobs)), key=lambda i: len(prompts[jobs[i][0]]))
        results: list[Rollout | None] = [None] * len(jobs)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.context(), packed_linears(self.model, self.packed), \
                    Progress(transient=True, disable=not self.progress) as bar:
                task = bar.add_task("sampling", total=len(jobs))
                starts = list(range(0, len(order), self.batch_size))
                behind = self._calls_behind(len(starts))  # agreed before any process starts generating
                if self._sharded():
                    self._forward_through_root()
                for start in starts:
                    chunk = order[start : start + self.batch_size]
                    batch_prompts = [prompts[jobs[i][0]] for i in chunk]
                    row_seeds = ([params.prompt_seeds[jobs[i][0]] + jobs[i][1] for i in chunk]
                                 if params.prompt_seeds is not None and not params.greedy else None)
                    for i, rollout in zip(chunk, self._generate(batch_prompts, params, row_seeds)):
                        rollout.problem_id = ids[jobs[i][0]]
                        rollout.sample_index = jobs[i][1]
                        results[i] = rollout
                    bar.advance(task, len(chunk))
                for _ in range(behind):
                    self._generate([prompts[0] if prompts else [self._pad_id()]], params)  # keeps the others going
        finally:
            self.model.train(was_training)
        return [r for r in results if r is not None]

    def _sharded(self) -> bool:
        """FSDP-sharded weights: every forward gathers layers collectively, so every process must
        run the same number of `generate` calls and of decoding steps."""
        from torch.distributed.tensor import DTensor

        from trajdistill.train.distributed import is_distributed

        return is_distributed() and any(isinstance(p, DTensor) for p in self.model.parameters())

    @torch.no_grad()
    def _forward_through_root(self) -> None:
        """Generation enters the transformers model below the FSDP root (a peft model's `generate`
        calls its base model's), and FSDP2 refuses a forward that does not start at the root
        before the root has run one; the root's own parameters (those outside every decoder-layer
        unit) are gathered only by the root's forward. A one-token forward through the root does
        both, and FSDP keeps a root's parameters gathered after its forward. Every process calls it."""
        dummy = torch.full((1, 1), self._pad_id(), dtype=torch.long, device=self.device)
        self.model(input_ids=dummy, attention_mask=torch.ones_like(dummy), logits_to_keep=1)

    def _calls_behind(self, calls: int) -> int:
        """How many `generate` calls this process must add so that all processes make as many as
        the busiest one (0 unless the weights are sharded)."""
        if not self._sharded():
            return 0
        import torch.distributed as dist

        most = torch.tensor([calls], dtype=torch.long, device=self.device)  # NCCL reduces device tensors only
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most) - calls

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], params: SamplingParams,
                  row_seeds: list[int] | None = None) -> list[Rollout]:
        from transformers import GenerationConfig, LogitsProcessorList

        tok = self.tokenizer
        pad_id = self._pad_id()
        input_ids, attention = left_padded(prompts, pad_id)
        width = input_ids.shape[1]
        # Per-row seeds: HF decodes greedily over a distribution in which our processor has already
        # drawn each row's token from its own generator (same warpers, same order as HF's sampling).
        native = not params.greedy and row_seeds is None
        config = GenerationConfig(**_explicit_generation_options(GenerationConfig(), {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": native,
            "temperature": params.temperature if native else 1.0,
            "top_p": params.top_p if native else 1.0,
            # 0: no top-k (None would mean HF's default 50); greedy applies no warper at all, and a
            # top_k of 0 there draws a "not valid" warning
            "top_k": params.top_k if native else None,
            "eos_token_id": tok.eos_token_id if params.stop_at_eos else None,
            "pad_token_id": pad_id,
            "use_cache": True,
        }))
        recorder = _LogprobRecorder(params.temperature)
        processors = [recorder] if row_seeds is None else [recorder, _RowSeededSampler(params, row_seeds, self.device)]
        with _model_generation_defaults_off(self.model):
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList(processors),
                synced_gpus=self._sharded(),  # a process that is done keeps stepping until all are
            )
        generated = out[:, width:].cpu()
        logprobs = recorder.finish(out[:, -1]).cpu() if generated.shape[1] else None
        return [self._to_rollout(prompt, generated[row], logprobs, row, params) for row, prompt in enumerate(prompts)]

    def _to_rollout(self, prompt, tokens, logprobs, row, params) -> Rollout:
        eos = self.tokenizer.eos_token_id
        length = len(tokens)
        finished = False
        if params.stop_at_eos and eos is not None:
            hits = (tokens == eos).nonzero()
            if len(hits):
                length = int(hits[0]) + 1  # keep EOS: the student must learn to stop
                finished = True
        response = tokens[:length].tolist()
        return Rollout(
            problem_id="",
            prompt_ids=list(prompt),
            response_ids=response,
            text=self.tokenizer.decode(response, skip_special_tokens=True),
            logprobs=logprobs[row, :length].tolist() if logprobs is not None else None,
            finished=finished,
        )
