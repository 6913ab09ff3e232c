"""The sampler interface. Callers depend on `Sampler.sample` only, so a vLLM engine on GPUs and the
Hugging Face `generate` backend here are interchangeable."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol, Sequence

from trajdistill import UserError
from trajdistill.records import Rollout


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    """Samples per prompt."""
    temperature: float = 1.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k filtering."""
    max_new_tokens: int = 256
    seed: int | None = None
    stop_at_eos: bool = True
    prompt_seeds: tuple[int, ...] | None = None
    """One seed per prompt: sample j of prompt i is drawn from its own generator seeded with
    `prompt_seeds[i] + j`, so it does not depend on which prompts share its batch or process
    (sharded evaluation). None: one stream seeded by `seed`."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler(Protocol):
    def sample(
        self, prompts: Sequence[list[int]], params: SamplingParams, problem_ids: Sequence[str] | None = None
    ) -> list[Rollout]:
        """Return `params.n` rollouts per prompt, grouped by prompt in input order.

        Each rollout carries the response token ids (ending with EOS when the model stopped), the
        decoded text, whether it finished before `max_new_tokens`, and the log-probs of its tokens
        under the sampling temperature (full distribution, before top-k/top-p truncation).
        """
        ...

    def sync(self, model, version: int | None = None) -> None:
        """Make the engine sample from `model`'s current weights (the trainer calls this before every
        collection and every evaluation). `model` may be wrapped (DDP/FSDP) and carry a LoRA adapter.
        `version` is the trainer's count of weight changes (optimizer steps, checkpoint loads): an
        engine that holds that version already skips the push; None means unknown (always push).
        A no-op for backends that sample from the live model (HF)."""
        ...

    def close(self) -> None:
        """Release the engine (vLLM: stop it and delete its model copy); a no-op for HF."""
        ...


# -- the backend registry ---------------------------------------------------------------------
# A backend is a factory `factory(model, tokenizer, *, batch_size, progress, context, packed, options)`
# returning a `Sampler`: `context` (a teacher's `as_teacher`, or None) is entered around every
# generation, `packed` is `speed.packed_linear`, `options` the backend's own settings (the vLLM
# backend's `VLLMOptions`, from `sampling.vllm`; None for the others). Register your own from your
# package without editing this one:
#
#     from trajdistill.rollout.sampler import register_sampler
#     register_sampler("my-engine", lambda model, tokenizer, **kw: MyEngineSampler(model, tokenizer))
#
# or as an entry point, loaded when the name is first asked for:
#
#     [project.entry-points."trajdistill.samplers"]
#     my-engine = "my_package.engine:make_my_engine"

SAMPLER_ENTRY_POINT_GROUP = "trajdistill.samplers"
SamplerFactory = Callable[..., Sampler]


def _native(model, tokenizer, *, batch_size, progress, context, packed, options=None) -> Sampler:
    from trajdistill.rollout.native import NativeSampler

    return NativeSampler(model, tokenizer, batch_size=batch_size, progress=progress, context=context, packed=packed)


def _hf(model, tokenizer, *, batch_size, progress, context, packed, options=None) -> Sampler:
    from trajdistill.rollout.hf import HFSampler

    return HFSampler(model, tokenizer, batch_size=batch_size, progress=progress, context=context, packed=packed)


def _vllm(model, tokenizer, *, batch_size, progress, context, packed, options=None) -> Sampler:
    from trajdistill.rollout.vllm import VLLMSampler

    with (context or contextlib.nullcontext)():  # the engine starts from the weights seen here
        return VLLMSampler(model, tokenizer, options)


_SAMPLERS: dict[str, SamplerFactory] = {"native": _native, "hf": _hf, "vllm": _vllm}


def register_sampler(name: str, factory: SamplerFactory) -> SamplerFactory:
    """Make `sampling.backend: NAME` build its samplers with `factory` (see above for its arguments)."""
    if not callable(factory):
        raise TypeError(f"sampler backend {name!r}: {factory!r} is not callable")
    _SAMPLERS[name] = factory
    return factory


def unregister_sampler(name: str) -> None:
    _SAMPLERS.pop(name, None)


def _sampler_entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=SAMPLER_ENTRY_POINT_GROUP)}


def sampler_names() -> list[str]:
    """Every backend `sampling.backend` accepts: the built-in ones, registered and entry-point ones."""
    return sorted(set(_SAMPLERS) | set(_sampler_entry_points()))


def sampler_factory(name: str) -> SamplerFactory:
    """The factory registered as `name`; ValueError listing the choices for an unknown name."""
    if name not in _SAMPLERS:
        point = _sampler_entry_points().get(name)
        if point is None:
            raise ValueError(f"unknown sampling backend '{name}' (choose one of: {', '.join(sampler_names())})")
        register_sampler(name, point.load())
    return _SAMPLERS[name]


def make_sampler(backend: str, model, tokenizer, *, batch_size: int = 32, progress: bool = True,
                 context: Callable[[], ContextManager] | None = None, vllm_options=None,
                 packed: str = "auto") -> Sampler:
    """The sampler of `backend` over `model`. `context` (a teacher's `as_teacher`) is entered around
    every generation, so the same factory serves the student and the teacher; `vllm_options` (a
    `trajdistill.rollout.vllm.VLLMOptions`) configures the vLLM engine; `packed` is
    `speed.packed_linear` (native and HF backends)."""
    try:
        factory = sampler_factory(backend)
    except ValueError as err:
        raise UserError(str(err)) from None
    return factory(model, tokenizer, batch_size=batch_size, progress=progress, context=context, packed=packed,
                   options=vllm_options if backend == "vllm" else None)


def sampler_for(spec, model, tokenizer, *, batch_size: int | None = None, progress: bool = False,
                context: Callable[[], ContextManager] | None = None, packed: str = "auto") -> Sampler:
    """The sampler a config's `sampling` section asks for (backend, batch size, `sampling.vllm`),
    so training, `traces generate` and `eval` configure the engine the same way."""
    vllm_options = None
    if spec.backend == "vllm":
        from trajdistill.rollout.vllm import VLLMOptions

        vllm_options = VLLMOptions(**spec.vllm.model_dump())
    return make_sampler(spec.backend, model, tokenizer, batch_size=batch_size or spec.batch_size,
                        progress=progress, context=context, vllm_options=vllm_options, packed=packed)


class LazySampler:
    """A sampler built on first use (the teacher's: a second vLLM engine costs memory and start-up
    time, and most methods never sample from the teacher)."""

    def __init__(self, build: Callable[[], Sampler]):
        self._build = build
        self._sampler: Sampler | None = None

    def sample(self, prompts, params: SamplingParams, problem_ids=None) -> list[Rollout]:
        if self._sampler is None:
            self._sampler = self._build()
        return self._sampler.sample(prompts, params, problem_ids)

    def sync(self, model, version: int | None = None) -> None:
        if self._sampler is not None:
            self._sampler.sync(model, version)

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
