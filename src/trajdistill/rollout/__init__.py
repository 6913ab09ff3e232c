"""Rollouts: prompts rendered with the chat template, sampled by a backend (HF now, vLLM on GPUs)."""

from trajdistill.rollout.prompts import render_prompt, render_privileged_prompt
from trajdistill.rollout.sampler import SamplingParams, Sampler, make_sampler

__all__ = ["SamplingParams", "Sampler", "make_sampler", "render_prompt", "render_privileged_prompt"]
