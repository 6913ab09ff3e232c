"""The sections of the configuration tree (`trajdistill.config.RunConfig`), one class each.

Every option is documented where it is declared, with its default and, where it comes from a
paper, the source. Every section forbids unknown keys.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def explicitly_set(self, name: str) -> bool:
        return explicitly_set(self, name)

    def explicit_fields(self) -> list[str]:
        """The fields given with a value other than their default, in declaration order."""
        return [name for name in type(self).model_fields if explicitly_set(self, name)]


def explicitly_set(model: BaseModel, name: str) -> bool:
    """Whether field `name` of `model` was given (in YAML, an override or the constructor) with a
    value other than its default: what an "option that does not apply here" check refuses. A
    default value written out (a saved `config.yaml` holds every field) is not an error."""
    if name not in model.model_fields_set:
        return False
    return getattr(model, name) != type(model).model_fields[name].get_default(call_default_factory=True)


class ModelSpec(Section):
    name: str = "smollm2-135m-instruct"
    """Builtin name, local model directory or Hugging Face id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """`auto`: bfloat16 on CUDA, float32 on CPU."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda`, `cuda:1`, ... (under accelerate the process's device wins)."""
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    """e.g. `sdpa` or `flash_attention_2`; None lets transformers choose."""
    autocast: Literal["none", "bf16", "fp16"] = "none"
    """Compute precision of every forward pass of the run, the student's and the teacher's alike
    (`torch.autocast`); `none` computes in the weights' `dtype`. Set it on `model:` only: it also
    governs a separate `teacher:`."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (non-reentrant
    `torch.utils.checkpoint`): activation memory of one layer instead of all, for ~1/3 more compute."""


class LoraSpec(Section):
    enabled: bool = True
    """LoRA via peft; False trains every weight (OPSD then keeps a frozen copy as teacher)."""
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class PromptSpec(Section):
    instruction: str = "Please reason step by step, and put your final answer within \\boxed{}."
    """Appended to every problem in the student prompt."""
    system: str | None = None
    privileged: str = (
        "{problem}\n\nHere is a reference solution:\n{reference}\n\n"
        "After understanding the reference solution, please try to solve this problem using your "
        "own approach below. {instruction}"
    )
    """OPSD teacher context; placeholders {problem}, {reference}, {instruction}."""


class DataSpec(Section):
    train: str = "builtin:arith-mix"
    """Problem source: `builtin:NAME`, a .jsonl/.parquet file or a saved `datasets` directory."""
    eval: str | None = None
    """Held-out source; None takes the held-out split of `train`."""
    held_out: float | int = 0.2
    """Held-out share (fraction) or count of `train`, split by a stable hash of the problem id."""
    max_train: int | None = None
    max_eval: int | None = 64
    kind: str = "math"
    """Problem kind of file data sets (`math`, `code`, or a kind with a registered verifier); it picks
    the verifier. Builtin sets know their kind."""
    fields: dict[str, str] = Field(default_factory=dict)
    """Field mapping for files, e.g. {prompt: question, answer: final, reference: solution}."""
    split_seed: int = 0


class VLLMSpec(Section):
    """`sampling.backend: vllm` engine settings (`trajdistill.rollout.vllm.VLLMOptions`); None
    means the right value for the device."""

    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """None: the student's parameter dtype (never vLLM's `auto`, which turns float32 into bfloat16)."""
    max_model_len: int | None = Field(None, ge=16)
    kv_cache_gb: float | None = Field(None, gt=0)
    """None: 2 GiB on CPU; on GPU what `gpu_memory_utilization` leaves after the weights."""
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    """The engine's share of the GPU; the trainer shares the device."""
    enforce_eager: bool | None = None
    """None: True on CPU (compiling takes minutes there), False on GPU (CUDA graphs)."""
    multiprocess: bool = False
    """Engine core in a child process (weights synced through /dev/shm) instead of in-process."""
    cpu_threads: str | None = None
    """CPU: cores the engine's OpenMP threads bind to, e.g. "0-1"; None: all this process may use."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs one engine spans. Under torchrun / accelerate launch every process runs its part of an
    engine (vLLM's `external_launcher`): N processes hold N / tensor_parallel_size engines, and the
    processes of one engine sample their prompts together. Must divide the number of processes."""
    sleep_mode: bool = False
    """GPU only: between generations the engine frees its KV cache and drops its weights (vLLM sleep
    level 2), leaving the memory to the update; the next sync pushes the weights again. Ignored by
    vLLM's CPU build."""
    rescore_logprobs: bool = False
    """With top-k/top-p on, re-score rollouts with the student's forward pass for exact log-probs.
    Off: the rollouts carry none there, and ReNIO (their only user) scores them itself with the
    same forward pass; the other methods never pay for it (5.5 s of a 14.8 s demo-size step)."""


class SamplingSpec(Section):
    backend: str = "native"
    """native: our decoding loop (prompt prefilled once per problem, finished rows leave the batch),
    HF `generate` where it cannot run; hf: `generate` itself; vllm: a vLLM engine synced per step;
    or a backend registered with `trajdistill.rollout.sampler.register_sampler` (a plugin's)."""
    n: int = Field(4, ge=1)
    """Rollouts per problem."""
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(20, ge=0)
    """0 disables top-k."""
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    """Sequences decoded together (native and HF backends); a memory knob."""
    vllm: VLLMSpec = Field(default_factory=VLLMSpec)
    max_prompt_tokens: int = Field(1024, ge=8)
    """Longest prompt (student or privileged teacher) allowed; preflight rejects longer ones."""

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, value: str) -> str:
        from trajdistill.rollout.sampler import sampler_names  # light: no torch

        if value not in sampler_names():
            raise ValueError(f"unknown sampling backend '{value}' (choose one of: {', '.join(sampler_names())})")
        return value

    @model_validator(mode="after")
    def _vllm_only_for_vllm(self):
        if self.backend != "vllm":
            given = self.vllm.explicit_fields()
            if given:
                raise ValueError(f"field 'vllm.{given[0]}': the sampling.vllm settings apply only to "
                                 f"sampling.backend vllm (this config uses {self.backend})")
        return self


class LossSpec(Section):
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "sampled_token"] = "forward_kl"
    beta: float = Field(0.5, ge=0.0, le=1.0)
    """Generalized JSD interpolation (GKD convention): 0 = forward KL, 1 = reverse KL."""
    temperature: float = Field(1.0, gt=0.0)
    """KL temperature tau: both distributions are softmax(logits / tau)."""
    vocab_clip: float | None = None
    """Per-vocab clip c: D_t = sum_v clamp(d_v, 0, c) (OPSD recipe: 0.05)."""
    token_clip: float | None = None
    """Per-token clip: D_t = min(D_t, c) (TRD's Forward KL w/ Clip: 0.1)."""
    top_k: int | None = None
    """Restrict to the teacher's top-k ids (TRD's Reverse KL w/ Top-K: 32)."""
    tail_bucket: bool = False
    aggregation: Literal["token", "sequence"] = "token"
    """token: mean over every response token of the optimisation batch; sequence: per-rollout mean."""
    chunk_size: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _refuse_what_the_divergence_ignores(self):
        if self.divergence == "sampled_token":
            for name in ("top_k", "vocab_clip", "token_clip", "beta", "tail_bucket"):
                if self.explicitly_set(name):
                    raise ValueError(f"field '{name}': does not apply to divergence sampled_token (it uses only "
                                     "the sampled token's log-ratio, no distribution over the vocabulary)")
        elif self.divergence != "jsd" and self.explicitly_set("beta"):
            raise ValueError(f"field 'beta': only divergence jsd uses it (this config uses {self.divergence})")
        if self.tail_bucket and self.top_k is None:
            raise ValueError("field 'tail_bucket': applies only with loss.top_k (the mass outside the top-k ids)")
        return self


class SpeedSpec(Section):
    """The speed switches (`speed:`): how the forwards run, not what they compute (each gives what
    its `off` gives, up to float rounding). Measured in `benchmarks/README.md`; settings for a GPU
    in `docs/scale.md`."""

    share_prefix: Literal["auto", "on", "off"] = "auto"
    """Encode each distinct prompt of a micro-batch once and run its responses on its KV cache
    (student forward/backward and teacher scoring). auto: when some prompt repeats and a probe on
    first use shows the model supports it; on: always; off: every row whole (bit-identical to
    earlier versions). Equal to off up to float rounding; with LoRA dropout > 0, the n responses
    of a prompt share one dropout mask on the prompt."""
    bucketing: Literal["auto", "off"] = "auto"
    """Run a micro-batch's forward (student forward/backward, teacher scoring) in groups of rows of
    similar length, so that padding positions are not computed; groups minimise padded positions
    + `bucket_cost` per extra forward. auto: in single-process runs; off: one padded forward."""
    bucket_cost: int = Field(64, ge=0)
    """What one more forward is worth, in positions. On a CPU core with SmolLM2-135M, 16 and 64 gave
    the same update time and 256 a slightly slower one (`benchmarks/bucketing.py`); raise it where
    small forwards underuse the device (GPUs: likely hundreds to thousands; not measured)."""
    packed_linear: Literal["auto", "off"] = "auto"
    """auto: passes without gradient (sampling with the native/HF backends, teacher scoring) multiply
    float32 CPU weights through oneDNN's packed linear (`trajdistill.models.packed`; faster than
    MKL's sgemm for the few rows of a decoding step; a LoRA layer as one product with its merged
    weight), at the cost of one more copy of the weights in memory (two with LoRA); other devices
    and dtypes are unaffected. off: `F.linear` everywhere."""

    @field_validator("share_prefix", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value  # YAML 1.1: on/off

    @field_validator("bucketing", "packed_linear", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        return {True: "auto", False: "off"}.get(value, value) if isinstance(value, bool) else value


class OptimSpec(Section):
    steps: int = Field(20, ge=1)
    problems_per_step: int = Field(8, ge=1)
    """Problems per optimisation step (times sampling.n rollouts), across all processes."""
    micro_batch_size: int = Field(16, ge=1)
    """Sequences per forward/backward; smaller ones accumulate gradients."""
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = 1.0
    epochs: float | None = None
    """Offline methods: epochs over the data set (overrides `steps` when set)."""


class EvalSpec(Section):
    k: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 4], min_length=1)
    """Pass@k values reported; n = max(k) samples per problem."""
    temperature: float = Field(0.6, ge=0.0)
    """Sampled evaluation: temperature 0.6, top-p 0.95, top-k 20, as the TRD and REDI papers
    evaluate."""
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(20, ge=0)
    """0 disables top-k."""
    grading: Literal["strict", "lenient"] = "strict"
    """Math answers: `strict` reads only the last \\boxed{} (the papers; TRD paper C.2); `lenient`
    also accepts "the answer is X", "#### X" or the last number when there is no box. Applies to
    evaluation and to training labels (verdicts of rollouts)."""
    greedy: bool = True
    """Also report greedy accuracy (one deterministic sample per problem)."""
    also_lenient: bool = False
    """Also report greedy and Avg@n accuracy under lenient math grading (`greedy_lenient`,
    `avg@n_lenient`), from the same samples re-graded: no extra sampling, the other columns as they
    are. Shows how much of the strict score's gap is format (an unboxed right answer)."""
    max_new_tokens: int = Field(256, ge=1)
    every: int = Field(0, ge=0)
    """Held-out evaluation every N steps during training (0: only before and after)."""
    before: bool = True
    """Evaluate the starting model before training (the 'base' row of comparisons)."""
    after: bool = True
    seed: int = 1234


class CheckpointSpec(Section):
    every: int = Field(0, ge=0)
    """Save every N steps (0: only at the end)."""
    keep_last: int = Field(2, ge=1)


class LoggingSpec(Section):
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    """Trackers next to `metrics.jsonl`: TensorBoard event files (`RUN/tensorboard/`) and/or
    Weights & Biases (offline mode unless WANDB_MODE says otherwise)."""


class DistributedSpec(Section):
    """How several processes (torchrun / accelerate launch) share the model. One process ignores it."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """`ddp`: every process holds the whole model, gradients are averaged. `fsdp`: FSDP2 through
    accelerate (`FullyShardedDataParallelPlugin(fsdp_version=2)`): parameters, gradients and
    optimizer state are sharded across processes, each decoder layer gathered only while it runs."""
    reshard_after_forward: bool = True
    """fsdp: free each layer's gathered weights after its forward (gathered again for backward);
    False keeps them until backward (faster, more memory)."""
    cpu_offload: bool = False
    """fsdp: keep the sharded parameters, gradients and optimizer state in CPU memory."""

    @model_validator(mode="after")
    def _fsdp_options_only_for_fsdp(self):
        if self.strategy == "ddp":
            for name in ("reshard_after_forward", "cpu_offload"):  # FSDP's own settings
                if self.explicitly_set(name):
                    raise ValueError(f"field '{name}': applies only to distributed.strategy fsdp "
                                     "(DDP keeps the whole model on every process)")
        return self


class TracesSpec(Section):
    """`trajdistill traces generate`: how the teacher that writes the traces is prompted."""

    context: Literal["plain", "privileged"] = "privileged"
    """The teacher sees the plain problem, or problem + reference solution (`prompt.privileged`);
    the student is always trained on the plain prompt."""
