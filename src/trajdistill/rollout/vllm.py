"""vLLM backend (`sampling.backend: vllm`; `pip install trajdistill[vllm]`, or `make vllm-env`).

One engine per run (per `tensor_parallel_size` processes under torchrun / accelerate launch, the
way vLLM supports colocating with a trainer: `distributed_executor_backend="external_launcher"`).
The engine starts with placeholder weights from the student's config (no model copy is written
anywhere) and keeps its own copy of the weights, so the trainer calls `sync(model, version)`
before every collection and evaluation: the LoRA-merged weights stream into vLLM's in-place
reload (`collective_rpc("reload_weights")`) one tensor at a time, FSDP shards gathered one at a
time. A sync is skipped when the trainer's weights version (its optimizer-step count) and the
adapter switches are those of the last push.

Log-probs follow the `Sampler` contract (log p(y_t) under softmax(logits / T) of the full
vocabulary). The engine runs with `logprobs_mode="processed_logprobs"`, which is exactly that when
top-k and top-p are off (and temperature-1 log-probs for greedy decoding, as the HF backend), but is
renormalised over the kept tokens when they are on; then the student re-scores the rollouts with
one forward pass (`rescore_logprobs`), or the rollouts carry no log-probs for the caller to compute.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from trajdistill import UserError
from trajdistill.models.backbone import base_causal_lm
from trajdistill.train.distributed import is_distributed
from trajdistill.records import Rollout
from trajdistill.rollout.rescore import response_logprobs
from trajdistill.rollout.sampler import SamplingParams
from trajdistill.rollout.weights import adapter_switches, iter_merged_weights

log = logging.getLogger(__name__)


@dataclass
class VLLMOptions:
    """Engine settings (`sampling.vllm`). None means "the right value for this device"."""

    dtype: str | None = None
    """float32, bfloat16 or float16; None takes the student's parameter dtype. (vLLM's own `auto`
    turns float32 checkpoints into bfloat16, 4.8x slower on CPUs without native bfloat16.)"""
    max_model_len: int | None = None
    """Longest prompt + response; None takes the model's `max_position_embeddings`."""
    kv_cache_gb: float | None = None
    """KV cache size in GiB. None: 2 GiB on CPU (SmolLM2-135M in float32 needs 46 KB a token, so
    that is ~46k tokens); on GPU, what `gpu_memory_utilization` leaves after the weights."""
    gpu_memory_utilization: float = 0.3
    """GPU only: the engine's share of device memory (weights, activations, KV cache). The trainer
    shares the device, so this stays well below vLLM's default of 0.9."""
    enforce_eager: bool | None = None
    """Skip torch.compile and CUDA graphs. None: True on CPU (compiling takes 130-230 s there and
    gains ~4% throughput), False on GPU."""
    multiprocess: bool = False
    """Run the engine core in a child process. In-process (the default) starts in ~5 s instead of
    ~28 s and syncs by handing over tensors; a child process syncs through a safetensors file under
    /dev/shm."""
    cpu_threads: str | None = None
    """CPU only: cores the engine binds its OpenMP threads to, e.g. "0-1" (VLLM_CPU_OMP_THREADS_BIND).
    None: every core this process may run on, none reserved. In-process the trainer shares them."""
    tensor_parallel_size: int = 1
    """GPUs (processes) one engine spans under torchrun; must divide the number of processes."""
    sleep_mode: bool = False
    """GPU only: free the KV cache and drop the weights between generations (vLLM sleep level 2);
    the next sync pushes the weights again. vLLM's CPU build ignores it."""
    seed: int = 0
    """Engine seed for requests without their own (`SamplingParams.seed` None)."""
    rescore_logprobs: bool = False
    """With top-k or top-p on, re-score rollouts with the student's forward pass (exact, costs one
    forward pass); False (default) leaves `logprobs` None there: callers that need them (ReNIO)
    compute them with that same forward pass, the others skip it."""


def vllm_sampling_kwargs(params: SamplingParams, *, logprobs: bool = True) -> dict[str, Any]:
    """Our sampling parameters as keyword arguments of `vllm.SamplingParams`."""
    return {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p if not params.greedy else 1.0,
        "top_k": params.top_k if not params.greedy else 0,  # 0 disables top-k in both conventions
        "max_tokens": params.max_new_tokens,
        "seed": params.seed,
        "logprobs": 0 if logprobs else None,  # 0: the sampled token's log-prob only
        "ignore_eos": not params.stop_at_eos,
        "detokenize": False,  # text is decoded with the project's tokenizer, as the HF backend does
    }


def engine_logprobs_exact(params: SamplingParams) -> bool:
    """Whether `processed_logprobs` are the full-vocabulary log-probs at the sampling temperature."""
    return params.greedy or (params.top_k == 0 and params.top_p >= 1.0)


def rollouts_from_vllm(outputs, prompts: Sequence[list[int]], problem_ids: Sequence[str], tokenizer,
                       *, with_logprobs: bool = True) -> list[Rollout]:
    """Convert vLLM `RequestOutput`s (one per prompt, `n` completions each) to rollouts.

    vLLM keeps the EOS it stopped on in `token_ids`, with its log-prob, as the HF backend does.
    """
    eos_id = tokenizer.eos_token_id
    rollouts = []
    for prompt, pid, request in zip(prompts, problem_ids, outputs):
        for completion in sorted(request.outputs, key=lambda c: c.index):
            ids = list(completion.token_ids)
            finished = completion.finish_reason == "stop"
            if finished and (not ids or ids[-1] != eos_id):
                raise RuntimeError(f"vLLM stopped without EOS (stop reason {completion.stop_reason!r})")
            logprobs = None
            if with_logprobs and completion.logprobs is not None:
                logprobs = [float(step[tok].logprob) for step, tok in zip(completion.logprobs, ids)]
            rollouts.append(Rollout(problem_id=pid, prompt_ids=list(prompt), response_ids=ids,
                                    text=tokenizer.decode(ids, skip_special_tokens=True), logprobs=logprobs,
                                    finished=finished, sample_index=completion.index))
    return rollouts


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _all_cores() -> str:
    cores = sorted(os.sched_getaffinity(0))
    return ",".join(str(c) for c in cores)


def _model_root() -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def _save_weights(weights, path: Path) -> None:
    """Write `(name, tensor)` pairs as one safetensors file (the child-process engine's sync).
    Tied tensors (the embedding as the head) are written twice: safetensors refuses shared storage,
    and an in-place reload leaves a tensor it does not find in the file uninitialised."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for name, tensor in weights:
        ptr = tensor.data_ptr()
        out[name] = tensor.detach().cpu().clone() if ptr in seen else tensor.detach().cpu().contiguous()
        seen.add(ptr)
    save_file(out, str(path))


def _processes() -> tuple[int, int]:
    """(rank, number of processes) of the launched job; (0, 1) without one."""
    if not is_distributed():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


class VLLMSampler:
    """Sampler over one vLLM engine that holds a copy of the student's weights."""

    def __init__(self, model, tokenizer, options: VLLMOptions | None = None, *, progress: bool = False,
                 **fields):
        try:
            import vllm
        except ImportError:
            raise UserError("sampling.backend=vllm needs vLLM: pip install 'trajdistill[vllm]' "
                            "(on CPU: make vllm-env)") from None
        self._vllm = vllm
        self.options = opts = replace(options or VLLMOptions(), **fields)
        self.tokenizer = tokenizer
        self.progress = progress
        self.model = model
        self.sync_seconds: list[float] = []
        """Wall time of each sync that pushed weights (skipped ones are not listed)."""
        self._synced: tuple | None = None  # (weights version, adapter switches) of the engine's copy
        self._asleep: set[str] = set()  # what sleep mode released: "weights", "kv_cache"

        base = base_causal_lm(model)
        on_cpu = _on_cpu()
        rank, world = _processes()
        tp = opts.tensor_parallel_size
        if world > 1 and opts.multiprocess:
            raise UserError("sampling.vllm.multiprocess: a run of several processes runs one engine part in "
                            "each process (vLLM's external_launcher); set it to false")
        if world % tp:
            raise UserError(f"sampling.vllm.tensor_parallel_size {tp} does not divide the {world} processes")
        if world == 1 and tp > 1:
            raise UserError(f"sampling.vllm.tensor_parallel_size {tp}: launch {tp} or more processes "
                            f"(torchrun --nproc_per_node N); each runs its part of an engine")
        if opts.sleep_mode and on_cpu:
            raise UserError("sampling.vllm.sleep_mode: vLLM's CPU build has no sleep mode (GPU only)")
        dtype = opts.dtype or str(next(base.parameters()).dtype).removeprefix("torch.")
        self._dir = Path(tempfile.mkdtemp(prefix="trajdistill-vllm-", dir=_model_root()))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        config = base.config.to_dict()
        config.pop("quantization_config", None)
        type(base.config).from_dict(config).save_pretrained(self._dir)
        tokenizer.save_pretrained(self._dir)
        if opts.multiprocess:  # the engine process loads (and reloads) from a file
            _save_weights(iter_merged_weights(model), self._dir / "model.safetensors")

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if opts.multiprocess else "0"
        if on_cpu:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = opts.cpu_threads or _all_cores()
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        kv_gb = opts.kv_cache_gb if opts.kv_cache_gb is not None else (2.0 if on_cpu else None)
        started = time.perf_counter()
        self.engine = vllm.LLM(
            model=str(self._dir),
            dtype=dtype,
            max_model_len=opts.max_model_len,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            kv_cache_memory_bytes=int(kv_gb * 2**30) if kv_gb is not None else None,
            enforce_eager=opts.enforce_eager if opts.enforce_eager is not None else on_cpu,
            # processes of one engine draw alike; requests carry their own seeds anyway
            seed=opts.seed + rank // tp,
            tensor_parallel_size=tp,
            distributed_executor_backend="external_launcher" if world > 1 else None,
            enable_sleep_mode=opts.sleep_mode,
            # vLLM's CPU runner cannot rewind a seeded request's generator after a prefill split
            # across steps ("CPU Generator does not use offset", as soon as one step's prompts
            # exceed the token budget): whole prompts only on CPU.
            enable_chunked_prefill=False if on_cpu else None,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # the model directory's sampling defaults never apply
            # in-process: placeholder weights, replaced by the first sync below (no file written)
            load_format="safetensors" if opts.multiprocess else "dummy",
            disable_log_stats=True,
        )
        self.start_seconds = time.perf_counter() - started
        if not opts.multiprocess:  # (a child-process engine loaded the file)
            self._push(model)
        self._synced = (0, adapter_switches(model))  # the weights it started from are version 0
        log.info("vLLM engine (%s, %s) started in %.1fs", dtype, "cpu" if on_cpu else "gpu", self.start_seconds)

    def sync(self, model, version: int | None = None) -> None:
        """Make the engine sample from `model`'s weights (LoRA merged): pushed unless `version` (the
        trainer's count of optimizer steps and loads) and the adapter switches are those of the last
        push. `version` None always pushes. Later rescoring uses `model` too. Under FSDP every
        process calls it together (each weight is gathered collectively)."""
        self.model = model
        if version is not None and self._synced == (version, adapter_switches(model)):
            return
        started = time.perf_counter()
        self._push(model, version)
        self.sync_seconds.append(time.perf_counter() - started)

    def _push(self, model, version: int | None = None) -> None:
        if "weights" in self._asleep:
            self.engine.wake_up(tags=["weights"])  # the KV cache comes back only for sampling
            self._asleep.discard("weights")
        if self.options.multiprocess:
            # tensors cannot cross into the engine process cheaply; a file in RAM can
            _save_weights(iter_merged_weights(model), self._dir / "model.safetensors")
            self.engine.collective_rpc("reload_weights", kwargs={"weights_path": str(self._dir)})
        else:
            self.engine.collective_rpc("reload_weights", kwargs={"weights_iterator": iter_merged_weights(model)})
        self.engine.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self._synced = (version, adapter_switches(model))

    def sample(self, prompts: Sequence[list[int]], params: SamplingParams,
               problem_ids: Sequence[str] | None = None) -> list[Rollout]:
        ids = list(problem_ids) if problem_ids is not None else [str(i) for i in range(len(prompts))]
        exact = engine_logprobs_exact(params)
        kwargs = vllm_sampling_kwargs(params, logprobs=exact)
        requests = []
        for i in range(len(prompts)):
            # vLLM gives the k-th of n samples the seed `seed + k`: spacing by n keeps all distinct
            if params.prompt_seeds is not None:  # the k-th sample of prompt i: prompt_seeds[i] + k, as HF's
                seed = params.prompt_seeds[i] % 2**63
            else:
                seed = None if params.seed is None else params.seed + i * params.n
            requests.append({**kwargs, "seed": seed})
        if "weights" in self._asleep:  # sampling without a sync since the engine slept
            self._push(self.model)
        if self._asleep:
            self.engine.wake_up(tags=sorted(self._asleep))
            self._asleep.clear()
        outputs = self._generate([list(p) for p in prompts], requests)
        if self.options.sleep_mode:
            self.engine.sleep(level=2)  # weights dropped: the next sync pushes them again
            self._asleep, self._synced = {"weights", "kv_cache"}, None
        rollouts = rollouts_from_vllm(outputs, prompts, ids, self.tokenizer, with_logprobs=exact)
        if not exact and self.options.rescore_logprobs:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            for r, lp in zip(rollouts, response_logprobs(self.model, rollouts, params.temperature, pad_id=pad)):
                r.logprobs = lp
        return rollouts

    def _generate(self, prompts: list[list[int]], requests: list[dict]) -> list:
        """The engine's outputs for this process's requests. The processes of one tensor-parallel
        engine must submit the same requests: each gets everyone's, runs them all, keeps its own."""
        tp = self.options.tensor_parallel_size
        group, mine = None, slice(None)
        if tp > 1:
            import torch.distributed as dist
            from vllm.distributed.parallel_state import get_tp_group

            group = get_tp_group().cpu_group
            parts: list = [None] * tp
            dist.all_gather_object(parts, (prompts, requests), group=group)
            before = sum(len(p[0]) for p in parts[: dist.get_rank(group)])
            mine = slice(before, before + len(prompts))
            prompts = [p for part in parts for p in part[0]]
            requests = [r for part in parts for r in part[1]]
        outputs = self.engine.generate([{"prompt_token_ids": p} for p in prompts],
                                       [self._vllm.SamplingParams(**r) for r in requests], use_tqdm=self.progress)
        return outputs[mine]

    def close(self) -> None:
        """Stop the engine and delete its model directory."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            shutdown = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
            if shutdown is not None and hasattr(shutdown, "shutdown"):
                shutdown.shutdown()
            self.engine = None
        self._cleanup()
