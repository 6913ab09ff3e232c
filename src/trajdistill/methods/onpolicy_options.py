"""The config sections of the on-policy methods (`opd:`, `opsd:`, `trd:`, `renio:`, `topd:`).

Imports no torch, so a config loads without it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trajdistill.methods.base import MethodOptions


class OnPolicyOptions(MethodOptions):
    """Options every on-policy method shares (the section named after the method, e.g. `opsd:`)."""

    off_policy_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """GKD-style share of responses that do not come from the student (0: fully on-policy)."""
    off_policy_source: Literal["reference", "teacher"] = "reference"
    """Where that share comes from: the data set's reference solution, or a sample from the teacher
    under its own context (OPSD: the privileged prompt; GKD's teacher-generated data). Either way the
    student is trained along it under the student's prompt, token by token against the teacher."""
    outcome_filter: Literal["all", "incorrect", "correct"] = "all"
    """Train only on rollouts with this verifier outcome (ReNIO's filtering experiment)."""
    drop_truncated: bool = False
    """Leave out rollouts that hit `sampling.max_new_tokens` without ending (DAPO's overlong
    filtering). Along a cut-off rollout a small model is often repeating itself, and a teacher that
    wants a properly ended answer keeps scoring "continue", so training on them teaches not to stop.
    Data set references always end; teacher samples cut at the budget are dropped like the student's."""
    diagnostics: bool = True
    """Log the TRD paper's C.5 training diagnostics (`diag/*`: teacher mass on epistemic onset tokens,
    teacher/student perplexity gap)."""


class SettingOptions(OnPolicyOptions):
    """On-policy methods that work with either teacher (TRD, ReNIO, TOPD)."""

    setting: Literal["opd", "opsd"] = "opsd"
    """opd: the separate `teacher:` model, same prompt; opsd: the student's base shown the reference."""
