"""vLLM backend for GPU machines (`sampling.backend: vllm`; `pip install trajdistill[vllm]`).

The engine owns its own copy of the weights. During training the student changes every step, so
the trainer must push new weights into the engine before sampling: `sync_weights(model)` loads the
(LoRA-merged) state dict into the engine's model runner, the approach TRL and verl use for
colocated vLLM. vLLM cannot run on this CPU-only machine; the parts that do not need it (parameter
translation, output conversion) are plain functions and are tested here.
"""

from __future__ import annotations

from typing import Any, Sequence

from trajdistill import UserError
from trajdistill.records import Rollout
from trajdistill.rollout.sampler import SamplingParams


def vllm_sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Our sampling parameters as keyword arguments of `vllm.SamplingParams`."""
    return {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p if not params.greedy else 1.0,
        "top_k": params.top_k if (params.top_k and not params.greedy) else -1,
        "max_tokens": params.max_new_tokens,
        "seed": params.seed,
        "logprobs": 0,  # log-prob of the sampled token only
        "ignore_eos": not params.stop_at_eos,
        "skip_special_tokens": True,
    }


def rollouts_from_vllm(outputs, prompts: Sequence[list[int]], problem_ids: Sequence[str], eos_id: int | None):
    """Convert vLLM `RequestOutput`s (one per prompt, `n` completions each) to rollouts."""
    rollouts = []
    for prompt, pid, request in zip(prompts, problem_ids, outputs):
        for j, completion in enumerate(request.outputs):
            ids = list(completion.token_ids)
            logprobs = None
            if completion.logprobs is not None:
                logprobs = [float(step[tok].logprob) for step, tok in zip(completion.logprobs, ids)]
            finished = completion.finish_reason == "stop"
            if finished and eos_id is not None and (not ids or ids[-1] != eos_id):
                ids.append(eos_id)  # vLLM drops the EOS it stopped on; training must see it
                if logprobs is not None:
                    logprobs.append(0.0)
            rollouts.append(Rollout(problem_id=pid, prompt_ids=list(prompt), response_ids=ids,
                                    text=completion.text, logprobs=logprobs, finished=finished,
                                    sample_index=j))
    return rollouts


def merged_state_dict(model) -> dict[str, Any]:
    """Plain-model state dict with the LoRA update folded in, leaving `model` unchanged.

    peft merges in place and unmerges afterwards, so no second copy of the weights is made; the
    names are those of the base transformers model (`.base_layer` removed, adapter tensors dropped).
    """
    if not hasattr(model, "merge_adapter"):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.merge_adapter()
    try:
        state = model.get_base_model().state_dict()
        return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in state.items() if "lora_" not in k}
    finally:
        model.unmerge_adapter()


class VLLMSampler:
    def __init__(self, model, tokenizer, *, gpu_memory_utilization: float = 0.3, **engine_kwargs):
        try:
            import vllm
        except ImportError:
            raise UserError("sampling.backend=vllm needs vLLM on a GPU machine: pip install 'trajdistill[vllm]'") from None
        self._vllm = vllm
        self.tokenizer = tokenizer
        name = getattr(getattr(model, "config", None), "_name_or_path", None) or str(model)
        self.engine = vllm.LLM(model=name, gpu_memory_utilization=gpu_memory_utilization, **engine_kwargs)

    def sync_weights(self, model) -> None:
        """Push the student's current weights (LoRA merged) into the engine before sampling."""
        runner = self.engine.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights(merged_state_dict(model).items())

    def sample(self, prompts, params: SamplingParams, problem_ids=None) -> list[Rollout]:
        ids = list(problem_ids) if problem_ids is not None else [str(i) for i in range(len(prompts))]
        sp = self._vllm.SamplingParams(**vllm_sampling_kwargs(params))
        outputs = self.engine.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=True)
        return rollouts_from_vllm(outputs, prompts, ids, self.tokenizer.eos_token_id)
