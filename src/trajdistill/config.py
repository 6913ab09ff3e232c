"""One typed configuration tree for every command; a preset in `configs/` is a YAML file of it.

Every option is documented where it is declared, with its default and, where it comes from a
paper, the source. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from trajdistill import UserError
from trajdistill.files import atomic_write_text


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    rescore_logprobs: bool = True
    """With top-k/top-p on, re-score rollouts with the student's forward pass for exact log-probs."""


class SamplingSpec(Section):
    backend: Literal["hf", "vllm"] = "hf"
    n: int = Field(4, ge=1)
    """Rollouts per problem."""
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(20, ge=0)
    """0 disables top-k."""
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    """Sequences per generate call (HF backend)."""
    vllm: VLLMSpec = Field(default_factory=VLLMSpec)
    max_prompt_tokens: int = Field(1024, ge=8)
    """Longest prompt (student or privileged teacher) allowed; preflight rejects longer ones."""


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
    share_prefix: Literal["auto", "on", "off"] = "auto"
    """Encode each distinct prompt of a micro-batch once and run its responses on its KV cache
    (student forward/backward and teacher scoring). auto: when some prompt repeats and a probe on
    first use shows the model supports it; on: always; off: every row whole (bit-identical to
    earlier versions). Equal to off up to float rounding; with LoRA dropout > 0, the n responses
    of a prompt share one dropout mask on the prompt."""

    @field_validator("share_prefix", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value  # YAML 1.1: on/off


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
    """Sampled evaluation: temperature 0.6, top-p 0.95, top-k 20, as the TRD (seed 003) and REDI
    (seed 004) papers evaluate."""
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(20, ge=0)
    """0 disables top-k."""
    grading: Literal["strict", "lenient"] = "strict"
    """Math answers: `strict` reads only the last \\boxed{} (the papers, seed 003 C.2); `lenient`
    also accepts "the answer is X", "#### X" or the last number when there is no box. Applies to
    evaluation and to training labels (verdicts of rollouts)."""
    greedy: bool = True
    """Also report greedy accuracy (one deterministic sample per problem)."""
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


class TracesSpec(Section):
    """`trajdistill traces generate`: how the teacher that writes the traces is prompted."""

    context: Literal["plain", "privileged"] = "privileged"
    """The teacher sees the plain problem, or problem + reference solution (`prompt.privileged`);
    the student is always trained on the plain prompt."""


# Top-level keys that used to be flat options and now live in the section of the methods using them.
_MOVED = {
    "setting": "the trd, renio and topd sections (opd and opsd name their setting)",
    "off_policy_fraction": "the on-policy method's section (e.g. opsd.off_policy_fraction)",
    "off_policy_source": "the on-policy method's section (e.g. opsd.off_policy_source)",
    "outcome_filter": "the on-policy method's section (e.g. renio.outcome_filter)",
    "drop_truncated": "the on-policy method's section (e.g. opsd.drop_truncated)",
    "diagnostics": "the on-policy method's section (e.g. opsd.diagnostics)",
    "offline": "the offline method's own section (sft:, redi:, dpo:, simpo:); offline.context is traces.context",
}


class RunConfig(Section):
    method: str = "opsd"
    """A registered method (`trajdistill.methods.method_names()`): opd, opsd, trd, renio, topd, sft,
    redi, dpo, simpo, or one registered from your own package. Its options are the YAML section
    named after it (`opsd: {off_policy_fraction: 0.5}`), validated by the method's `Options`."""
    seed: int = 0
    output_dir: str = "runs/run"
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: ModelSpec | None = None
    """The separate teacher of OPD-setting methods; refused where the method does not use one."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    traces: TracesSpec = Field(default_factory=TracesSpec)
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    _options: Any = PrivateAttr(default=None)

    @property
    def method_class(self):
        from trajdistill.methods import method_class

        return method_class(self.method)

    @property
    def options(self):
        """The chosen method's own section (an instance of its `Options`)."""
        if self._options is None:
            self._options = self.method_class.Options()
        return self._options

    def tree(self) -> dict[str, Any]:
        """The YAML tree that `load_config` reads back into this config."""
        out = self.model_dump(mode="json")
        out[self.method] = self.options.model_dump(mode="json")
        if not self.method_class.uses_loss_section:  # its other loss fields are refused on load
            out["loss"] = {"chunk_size": out["loss"]["chunk_size"]}
        return out


def config_from_tree(tree: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a whole tree: the method first (before anything is loaded), then the shared
    sections, then the method's own section and the method's cross-field checks."""
    from trajdistill.methods import method_class, method_names

    tree = dict(tree)
    method = tree.get("method", RunConfig.model_fields["method"].default)
    if not isinstance(method, str):
        raise UserError(f"{source}: field 'method': expected a method name, got {method!r}")
    try:
        cls = method_class(method)
    except ValueError as err:
        raise UserError(f"{source}: field 'method': {err}") from None
    section = tree.pop(method, None)
    names = set(method_names())
    for key in tree:
        if key in names:
            raise UserError(f"{source}: field '{key}': method {method} does not use the `{key}` section "
                            f"(it holds the options of method {key})")
        if key in _MOVED:
            raise UserError(f"{source}: field '{key}': not a top-level option; it belongs in {_MOVED[key]}")
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source)) from None
    if section is not None and not isinstance(section, dict):
        raise UserError(f"{source}: field '{method}': the method's section must be a mapping")
    try:
        cfg._options = cls.Options.model_validate(section or {})
    except ValidationError as err:
        raise UserError(format_validation_error(err, source, prefix=method)) from None
    try:
        _check_method_fields(cfg, cls, tree)
        cls.check_config(cfg)
    except ValueError as err:
        raise UserError(f"{source}: {err}") from None
    return cfg


def _check_method_fields(cfg: RunConfig, cls, tree: dict[str, Any]) -> None:
    for field in ("autocast", "gradient_checkpointing"):
        if cfg.teacher is not None and field in cfg.teacher.model_fields_set:
            raise ValueError(f"field 'teacher.{field}': set model.{field}; the teacher follows the "
                             "student's precision policy and is never trained")
    kind = cls.teacher_kind(cfg.options)
    if kind == "separate" and cfg.teacher is None:
        raise ValueError(f"field 'teacher': method {cfg.method} in the opd setting needs a `teacher` model")
    if kind != "separate" and cfg.teacher is not None:
        what = "no teacher" if kind == "none" else "the student's own base weights as its teacher"
        raise ValueError(f"field 'teacher': method {cfg.method} uses {what}; remove `teacher` "
                         "(or choose the opd setting)")
    if not cls.uses_loss_section:
        used = sorted(set(tree.get("loss") or {}) - {"chunk_size"})
        if used:
            raise ValueError(f"field 'loss.{used[0]}': method {cfg.method} does not use it "
                             "(only loss.chunk_size applies to sequence objectives)")


def format_validation_error(err: ValidationError, source: str, prefix: str | None = None) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(first["loc"])) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: field '{where}': {first['msg']}{more}"


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one `a.b.c=value` override to a nested dict."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml_tree(path: Path, _seen: tuple = ()) -> dict[str, Any]:
    """Read one preset; a top-level `base: other.yaml` (relative to the file) is merged under it."""
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    if path.resolve() in _seen:
        raise UserError(f"{path}: `base` chain loops back on itself")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{line} invalid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a config must be a mapping of sections")
    base = tree.pop("base", None)
    if base is not None:
        inherited = read_yaml_tree(path.parent / str(base), _seen + (path.resolve(),))
        if "method" in tree and inherited.get("method") != tree["method"]:
            # A preset that changes the method does not inherit the base method's own options.
            inherited.pop(str(inherited.get("method")), None)
        tree = _deep_merge(inherited, tree)
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML preset (or the defaults) and apply `key.sub=value` overrides."""
    tree: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        tree = read_yaml_tree(Path(path))
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return config_from_tree(tree, source)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.tree(), sort_keys=False))
