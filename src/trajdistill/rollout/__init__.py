"""Rollouts: prompts rendered with the chat template, sampled by a backend (HF now, vLLM on GPUs)."""

from trajdistill.rollout.prompts import render_prompt, render_privileged_prompt
from trajdistill.rollout.sampler import SamplingParams, Sampler, make_sampler, sampler_for

__all__ = ["SamplingParams", "Sampler", "make_sampler", "sampler_for", "render_prompt", "render_privileged_prompt"]
