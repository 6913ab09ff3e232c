"""One typed configuration tree for every command; a preset in `configs/` is a YAML file of it.

Every option is documented where it is declared, with its default and, where it comes from a
paper, the source. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    fields: dict[str, str] = Field(default_factory=dict)
    """Field mapping for files, e.g. {prompt: question, answer: final, reference: solution}."""
    split_seed: int = 0


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
    k: list[int] = Field(default_factory=lambda: [1, 4])
    """Pass@k values reported; n = max(k) samples per problem."""
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
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


class TRDSpec(Section):
    """TRD (seed 003): stage 1 samples y_o with `sampling`, stage 2 refines it into y_r, stage 3
    distils with the `loss` divergence along y_r (teacher context: the refinement prompt)."""

    mode: Literal["offline", "online"] = "offline"
    """offline: stages 1-2 once over the whole training set before training (the paper's
    single-update pipeline); online: refine each step's fresh rollouts."""
    fallback: Literal["raw", "drop"] = "raw"
    """What to do with an unusable refinement (empty, truncated at the budget, or not in the answer
    format): train on the raw rollout y_o (teacher context: the plain OPD/OPSD one), or drop it."""
    dataset: str | None = None
    """Restart from a saved stage-1/2 dataset (parquet file or folder) instead of sampling."""
    refine_max_new_tokens: int | None = Field(None, ge=1)
    """Stage-2 response budget; None: `sampling.max_new_tokens`."""
    refine_batch_size: int | None = Field(None, ge=1)
    """Offline mode: problems per stage-1/2 chunk; None: `sampling.batch_size`."""


class RenioSpec(Section):
    """ReNIO sample weights (seed 000; methods.md). Presets renio-opd / renio-opsd set C and delta."""

    ratio_cap: float = 2.0
    """C: cap on the log-ratio r_t = min(log p_S(y_t) - log p_T(y_t), C). Authors: OPD 2.0, OPSD 2.5."""
    threshold: float = 1.0
    """delta: pivotal tokens have r_t >= delta. Authors: OPD 1.0, OPSD 0.8."""
    tau: float = Field(1.0, gt=0.0)
    """tau_w in w_i = exp(s_i / tau_w)."""
    weight_cap: float = Field(10.0, gt=0.0)
    """Cap on the normalised weight (applied after normalising, as the authors do)."""
    normalize: Literal["batch", "micro"] = "batch"
    """batch: divide by the mean raw weight over the whole optimisation batch, across processes
    and micro-batches (ours); micro: within each micro-batch on each device (the authors' code)."""


class TopdSpec(Section):
    """TOPD (seed 002): our formulation, no public code; every value below is our choice (methods.md)."""

    filter: bool = True
    """Near-future filter: drop high-loss tokens whose near future is not divergent."""
    quantile: float = Field(0.2, gt=0.0, le=1.0)
    """q: high-loss tokens are the top q fraction of D_t over the step's response tokens."""
    window: int = Field(8, ge=1)
    """K: near-future window F_t = mean D_{t+1..t+K} (same rollout)."""
    rho: float = Field(1.0, ge=0.0)
    """A high-loss token is kept iff F_t >= rho * mean D."""
    guidance: bool = False
    """Near-future guidance: the teacher continues the student's prefix at kept divergent tokens."""
    max_branches: int = Field(2, ge=1)
    """m: guidance branches per rollout, at its largest kept high-loss D_t."""
    horizon: int = Field(16, ge=1)
    """H: tokens the teacher continues for."""
    guidance_weight: float = Field(1.0, ge=0.0)
    """lambda_g: weight of the guidance term (its own token mean)."""
    guidance_temperature: float = Field(0.0, ge=0.0)
    """Teacher sampling temperature for the continuation; 0 = greedy."""


class OfflineSpec(Section):
    """SFT / REDI / DPO / SimPO on fixed traces (seeds 001, 004), and `trajdistill traces`.

    Data sets follow Hugging Face conventions: `prompt`/`completion` rows for `sft`,
    `prompt`/`chosen`/`rejected` rows for `redi`, `dpo` and `simpo` (strings: the prompt is the
    user turn, rendered with the model's chat template; or conversational message lists).
    """

    dataset: str | None = None
    """Training data: a .jsonl / .parquet file or a saved `datasets` directory (required)."""
    alpha: float = Field(0.8, ge=0.0)
    """REDI weight of the rejected term: 0 = SFT, 1 = symmetric (collapses); authors: 0.8."""
    beta: float = Field(0.1, gt=0.0)
    """DPO beta (REDI paper's baseline: 0.001) or SimPO beta (2.0), depending on `method`."""
    gamma: float = 1.0
    """SimPO target margin gamma (REDI paper's baseline: 1.0)."""
    reference: str | None = None
    """DPO reference model; None: the starting model (adapter disabled under LoRA), i.e. the
    stage-1 SFT model when `model.name` is its exported directory. Scored once, before training."""
    max_prompt_tokens: int = Field(512, ge=1)
    """Rows whose templated prompt is longer are dropped (counted in the log)."""
    max_response_tokens: int = Field(512, ge=1)
    """Rows with a longer completion (chosen or rejected) are dropped."""
    context: Literal["plain", "privileged"] = "privileged"
    """`trajdistill traces`: teacher sees the plain problem, or problem + reference solution
    (`prompt.privileged`); the student is always trained on the plain prompt."""


class RunConfig(Section):
    method: str = "opsd"
    """opd | opsd | trd | renio | topd | sft | redi | dpo | simpo."""
    setting: Literal["opd", "opsd"] = "opsd"
    """Teacher kind for methods that work in both settings (TRD, ReNIO, TOPD)."""
    seed: int = 0
    output_dir: str = "runs/run"
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: ModelSpec | None = None
    """OPD teacher; None in OPSD (the student's base with the adapter off is the teacher)."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    off_policy_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """GKD-style share of responses that do not come from the student (0: fully on-policy)."""
    off_policy_source: Literal["reference", "teacher"] = "reference"
    """Where that share comes from: the data set's reference solution, or a sample from the teacher
    under its own context (OPSD: the privileged prompt; GKD's teacher-generated data). Either way the
    student is trained along it under the student's prompt, token by token against the teacher."""
    outcome_filter: Literal["all", "incorrect", "correct", "fail_to_pass"] = "all"
    drop_truncated: bool = False
    """Leave out rollouts that hit `sampling.max_new_tokens` without ending (DAPO's overlong
    filtering). Along a cut-off rollout a small model is often repeating itself, and a teacher that
    wants a properly ended answer keeps scoring "continue", so training on them teaches not to stop.
    Data set references always end; teacher samples cut at the budget are dropped like the student's."""
    diagnostics: bool = True
    """Log seed 003's C.5 training diagnostics (`diag/*`: teacher mass on epistemic onset tokens,
    teacher/student perplexity gap) in every on-policy method, baselines included."""
    trd: TRDSpec = Field(default_factory=TRDSpec)
    renio: RenioSpec = Field(default_factory=RenioSpec)
    topd: TopdSpec = Field(default_factory=TopdSpec)
    offline: OfflineSpec = Field(default_factory=OfflineSpec)

    @model_validator(mode="before")
    @classmethod
    def _setting_follows_method(cls, data: Any) -> Any:
        # opd / opsd name their setting; the other on-policy methods take it from `setting`.
        if isinstance(data, dict) and data.get("method") in ("opd", "opsd"):
            data = {**data, "setting": data["method"]}
        return data

    @model_validator(mode="after")
    def _teacher_matches_setting(self) -> "RunConfig":
        if self.setting == "opd" and self.method in ("opd", "trd", "renio", "topd") and self.teacher is None:
            raise ValueError(f"method {self.method} in the opd setting needs a `teacher` model")
        if self.outcome_filter == "fail_to_pass" and self.method != "trd":
            raise ValueError("outcome_filter fail_to_pass needs a refined trajectory: only method trd has one")
        if self.drop_truncated and self.method == "trd":
            raise ValueError("drop_truncated does not apply to trd: cut-off refinements follow `trd.fallback`")
        return self


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
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
        tree = _deep_merge(read_yaml_tree(path.parent / str(base), _seen + (path.resolve(),)), tree)
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
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise UserError(_format_error(err, source)) from None


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
