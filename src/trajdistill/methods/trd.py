"""TRD: trajectory-refined distillation (the TRD paper; docs/methods.md).

    stage 1   y_o ~ p_S(. | c_S)                                    (student rollout, n = 1)
    stage 2   y_r ~ p_T(. | refine(x, y_o))       OPD: separate teacher, no reference
                    p_T(. | refine(x, y*, y_o))   OPSD: same base, adapter off, reference shown
              clean y_r (strip a copied template head); train on y_r (an empty one is skipped;
              `trd.fallback: raw | drop` swaps unusable ones for y_o or drops them)
    stage 3   D_t = KL(p_T(. | refine(...), y_r<t) || p_S(. | c_S, y_r<t))   for t in y_r
              (full-vocabulary forward KL, no clip: the `loss` section of the preset)

`trd.mode: offline` runs stages 1-2 once over the whole training set before training, with the
initial student, and trains on the saved dataset (the paper's single-update pipeline);
`online` refines each step's fresh rollouts. Either way every (y_o, y_r) pair is written to
`rollouts/*.parquet` in the run directory (readable by pandas and `datasets`), and
`trd.dataset: PATH` restarts stage 3 from such a file without sampling.

Stage 2 samples through the trainer's teacher sampler (the backend of `sampling.backend`).
Rows, their statuses and the refinement table live in `trd_rows`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from rich.console import Console

from trajdistill import UserError
from trajdistill.eval.diagnostics import kl_by_outcome
from trajdistill.eval.runner import reflection_count
from trajdistill.files import atomic_write_json, atomic_write_text
from trajdistill.methods.base import StepResult
from trajdistill.methods.onpolicy import OnPolicyDistillation, SettingOptions
from trajdistill.methods.trd_prompts import initial_instruction, refinement_text, strip_echo
from trajdistill.methods.trd_rows import (JOINT, STATUSES, joint_outcome, load_rows, refinement_status,
                                          refinement_table, refinement_table_markdown, save_rows)
from trajdistill.records import Problem, Rollout, Verdict
from trajdistill.rollout import SamplingParams, render_prompt
from trajdistill.rollout.prompts import chat_ids
from trajdistill.train.batch import TrainSequence
from trajdistill.train.distributed import gather_lists

console = Console(stderr=True)

OFFLINE_FILE = "rollouts/trd.parquet"
ONLINE_DIR = "rollouts/trd-online"
OFFLINE_STEP = 1_000_000  # seeds and `step` column of the offline pass (chunk c: OFFLINE_STEP + c)


def choose_target(row: dict, fallback: str, outcome_filter: str) -> str | None:
    """Which trajectory stage 3 trains on: "y_r", "y_o" (fallback raw), or None (dropped)."""
    status = row["refine_status"]
    usable = status == "ok" or (fallback == "none" and status != "empty")
    target = "y_r" if usable else ("y_o" if fallback == "raw" else None)
    if target == "y_o" and not row["y_o_ids"]:
        target = None
    passed_o, passed_r = bool(row["y_o_passed"]), bool(row["y_r_passed"])
    if outcome_filter == "fail_to_pass" and not (target == "y_r" and not passed_o and passed_r):
        return None
    if outcome_filter in ("correct", "incorrect") and passed_o != (outcome_filter == "correct"):
        return None
    return target


class TRDOptions(SettingOptions):
    """The section `trd:`. TRD (docs/methods.md): stage 1 samples y_o with `sampling`, stage 2 refines it into y_r, stage 3
    distils with the `loss` divergence along y_r (teacher context: the refinement prompt)."""

    outcome_filter: Literal["all", "incorrect", "correct", "fail_to_pass"] = "all"
    """Which (y_o, y_r) rows stage 3 trains on: by y_o's outcome, or fail_to_pass (y_o wrong, y_r right)."""
    mode: Literal["offline", "online"] = "offline"
    """offline: stages 1-2 once over the whole training set before training (the paper's
    single-update pipeline); online: refine each step's fresh rollouts."""
    fallback: Literal["none", "raw", "drop"] = "none"
    """What to do with an unusable refinement (truncated at the budget, or not in the answer
    format). `none` (the paper's pipeline, TRD paper section 5 and Table 13): train on y_r whatever
    its status; only an empty refinement is skipped (counted in `refine/empty`). `raw`: train on the
    raw rollout y_o instead (teacher context: the plain OPD/OPSD one). `drop`: leave it out.
    `train/on_refined` logs the share trained on y_r."""
    dataset: str | None = None
    """Restart from a saved stage-1/2 dataset (parquet file or folder) instead of sampling."""
    refine_max_new_tokens: int | None = Field(None, ge=1)
    """Stage-2 response budget; None: `sampling.max_new_tokens`."""
    refine_batch_size: int | None = Field(None, ge=1)
    """Offline mode: problems per stage-1/2 chunk; None: `sampling.batch_size`."""



class TrajectoryRefinedDistillation(OnPolicyDistillation):
    """`method: trd` with `trd.setting: opd | opsd`."""

    Options = TRDOptions
    progress_metrics = (("kl", "kl/mean"), ("pass", "rollout/pass_rate"), ("refined", "refine/pass_rate"))

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.options.drop_truncated:
            raise ValueError("field 'trd.drop_truncated': does not apply to trd; cut-off refinements "
                             "follow `trd.fallback`")

    # -- prompts ---------------------------------------------------------------------------------
    def student_prompt(self, problem: Problem) -> list[int]:
        p = self.cfg.prompt
        return render_prompt(self.ctx.tokenizer, problem, initial_instruction(problem, p.instruction), p.system)

    def refinement_prompt(self, problem: Problem, initial: str) -> list[int]:
        p = self.cfg.prompt
        return chat_ids(self.ctx.tokenizer, refinement_text(problem, initial, self.setting, p.instruction),
                        p.system)

    # -- stage 2 ---------------------------------------------------------------------------------
    def refine_params(self, step: int) -> SamplingParams:
        s, budget = self.cfg.sampling, self.opts.refine_max_new_tokens
        return SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              max_new_tokens=budget or s.max_new_tokens,
                              seed=self.cfg.seed * 100_003 + step * 7919 + self.ctx.rank + 55_555)

    def refine(self, prompts: list[list[int]], ids: list[str], step: int) -> list[Rollout]:
        """Sample one refinement per prompt from the teacher (OPSD: the base, adapter disabled)."""
        return self.sample_teacher(prompts, self.refine_params(step), ids)

    def stage12(self, problems: list[Problem], step: int) -> list[dict]:
        """Stages 1 and 2 on `problems`: one dataset row per raw rollout."""
        rollouts = [r for r in self.rollouts(problems, step) if r.response_ids]
        by_id = {p.id: p for p in problems}
        refine_prompts = [self.refinement_prompt(by_id[r.problem_id], r.text) for r in rollouts]
        refined = self.refine(refine_prompts, [r.problem_id for r in rollouts], step)
        return [self.make_row(by_id[y_o.problem_id], y_o, y_r, prompt, step)
                for y_o, y_r, prompt in zip(rollouts, refined, refine_prompts)]

    def make_row(self, problem: Problem, y_o: Rollout, y_r: Rollout, refine_prompt: list[int], step: int) -> dict:
        tok = self.ctx.tokenizer
        text, stripped = strip_echo(y_r.text, problem)
        if stripped:  # re-tokenise what is left; keep EOS when the refinement stopped by itself
            ids = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if y_r.finished else [])
            ids = ids if text else []
        else:
            ids = list(y_r.response_ids)
        verdict = self.ctx.verifier.check(problem, text)
        return {
            "problem_id": problem.id, "kind": problem.kind, "problem": problem.prompt,
            "answer": problem.answer, "reference": problem.reference,
            "sample_index": y_o.sample_index, "step": step,
            "prompt_ids": list(y_o.prompt_ids), "teacher_prompt_ids": self.teacher_prompt(problem),
            "refine_prompt_ids": list(refine_prompt),
            "y_o": y_o.text, "y_o_ids": list(y_o.response_ids), "y_o_tokens": len(y_o.response_ids),
            "y_o_finished": bool(y_o.finished), "y_o_passed": bool(y_o.verdict.passed),
            "y_o_status": y_o.verdict.status,
            "y_r_raw": y_r.text, "y_r": text, "y_r_ids": ids, "y_r_tokens": len(ids),
            "y_r_finished": bool(y_r.finished), "y_r_passed": bool(verdict.passed), "y_r_status": verdict.status,
            "refine_status": refinement_status(text, y_r.finished, problem.kind), "echo_stripped": stripped,
        }

    # -- offline pipeline ------------------------------------------------------------------------
    def train_items(self, problems: list[Problem]) -> list:
        """Offline: stages 1-2 over the whole training set once (or a saved dataset), kept rows only."""
        if self.opts.mode == "online" and not self.opts.dataset:
            return problems
        rows = self.offline_rows(problems)
        kept = [r for r in rows if choose_target(r, self.opts.fallback, self.opts.outcome_filter)]
        if self.ctx.rank == 0:
            console.print(f"TRD stage 3: training on {len(kept)} of {len(rows)} rollouts "
                          f"(fallback {self.opts.fallback}, outcome_filter {self.opts.outcome_filter})")
        if not kept:
            raise UserError("TRD: no rollout left to train on after the refinement fallback and outcome filter")
        return kept

    def offline_rows(self, problems: list[Problem]) -> list[dict]:
        """A saved dataset (`trd.dataset`), this run's own earlier pass, or a fresh one; the
        refinement table of the rows used is written to `rollouts/trd-table.{md,json}`."""
        run_dir = Path(self.ctx.run_dir or self.cfg.output_dir)
        path, manifest = run_dir / OFFLINE_FILE, self.manifest(problems)
        manifest_path = path.with_suffix(".json")
        if self.opts.dataset:
            rows = load_rows(self.opts.dataset)
            train_ids = {p.id for p in problems}
            usable = [r for r in rows if r["problem_id"] in train_ids]
            if self.ctx.rank == 0 and len(usable) < len(rows):
                console.print(f"trd.dataset: ignoring {len(rows) - len(usable)} rows whose problem is not "
                              "in the training split")
            rows = usable
        elif path.is_file() and manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
            if self.ctx.rank == 0:
                console.print(f"TRD: reusing stages 1-2 from {path} (same model, settings and problems)")
            rows = load_rows(path)
        else:
            rows = self.sample_dataset(problems)
            if self.ctx.rank == 0:
                save_rows(rows, path)
                atomic_write_json(manifest_path, manifest)
        if self.ctx.rank == 0:
            table = refinement_table(rows)
            atomic_write_json(run_dir / "rollouts/trd-table.json", table)
            atomic_write_text(run_dir / "rollouts/trd-table.md", refinement_table_markdown(table))
            console.print(refinement_table_markdown(table))
        return rows

    def sample_dataset(self, problems: list[Problem]) -> list[dict]:
        """Stages 1-2 in chunks (this process's share, then gathered), with progress on stderr."""
        mine = problems[self.ctx.rank :: self.ctx.world]
        size = self.opts.refine_batch_size or self.cfg.sampling.batch_size
        rows: list[dict] = []
        for chunk, start in enumerate(range(0, len(mine), size)):
            rows += self.stage12(mine[start : start + size], step=OFFLINE_STEP + chunk)
            if self.ctx.rank == 0:
                console.print(f"TRD stages 1-2: {min(start + size, len(mine))}/{len(mine)} problems")
        order = {p.id: i for i, p in enumerate(problems)}
        return sorted(gather_lists(rows), key=lambda r: (order[r["problem_id"]], r["sample_index"]))

    def manifest(self, problems: list[Problem]) -> dict:
        c = self.cfg
        ids = hashlib.sha256("\n".join(p.id for p in problems).encode()).hexdigest()
        return {"model": c.model.name, "teacher": c.teacher.name if c.teacher else None, "setting": self.setting,
                "seed": c.seed, "lora": c.lora.model_dump(), "prompt": c.prompt.model_dump(),
                "sampling": c.sampling.model_dump(exclude={"batch_size", "backend"}),
                "refine_max_new_tokens": self.opts.refine_max_new_tokens, "problems": ids, "world": self.ctx.world}

    # -- stage 3 ---------------------------------------------------------------------------------
    def sequence(self, row: dict) -> TrainSequence | None:
        target = choose_target(row, self.opts.fallback, self.opts.outcome_filter)
        if target is None:
            return None
        on_refined = target == "y_r"
        return TrainSequence(
            student_prompt=list(row["prompt_ids"]),
            response=list(row["y_r_ids"] if on_refined else row["y_o_ids"]),
            # the refinement prompt only makes sense before y_r: a raw fallback gets the plain context
            teacher_prompt=list(row["refine_prompt_ids"] if on_refined else row["teacher_prompt_ids"]),
            passed=bool(row["y_o_passed"]),  # C.5 splits the KL by the stage-1 outcome
            problem_id=row["problem_id"], finished=bool(row[f"{target}_finished"]),
            labels={"target": target, "joint": joint_outcome(row["y_o_passed"], row["y_r_passed"])},
        )

    def collect(self, items: list, step: int) -> StepResult:
        rows = items
        if items and isinstance(items[0], Problem):  # online: stages 1-2 now, with the current student
            rows = self.stage12(items, step)
            save_rows(rows, Path(self.ctx.run_dir or self.cfg.output_dir) / ONLINE_DIR
                      / f"step-{step + 1:06d}-rank{self.ctx.rank}.parquet")
        seqs = [s for s in map(self.sequence, rows) if s is not None]
        return StepResult(seqs, trd_metrics(rows, seqs), rows)

    def step_verdicts(self, result: StepResult) -> list[Verdict]:
        """The verdicts of both trajectories of every row (y_o, and y_r when there is one)."""
        return [Verdict(bool(row[f"{t}_passed"]), str(row[f"{t}_status"])) for row in result.rollouts
                for t in ("y_o", "y_r") if row.get(f"{t}_status")]

    def extra_metrics(self, per_token, batch, seqs: list[TrainSequence]) -> dict:
        """KL split by the joint (y_o, y_r) outcome and by the outcome of the trained trajectory."""
        metrics = kl_by_outcome(per_token, batch.seq_index, [s.labels["joint"] for s in seqs], "kl/joint")
        metrics.update(kl_by_outcome(per_token, batch.seq_index, [s.labels["target"] for s in seqs], "kl/target"))
        return metrics


def trd_metrics(rows: list[dict], seqs: list[TrainSequence]) -> dict[str, tuple[float, float]]:
    """Per step, as (sum, count): stage-1 rollouts (the `rollout/*` names of OPD/OPSD), stage-2
    refinements, joint outcomes and what stage 3 trains on."""
    n = float(len(rows))
    out = {
        "rollout/pass_rate": (sum(bool(r["y_o_passed"]) for r in rows), n),
        "rollout/response_len": (sum(r["y_o_tokens"] for r in rows), n),
        "rollout/truncated": (sum(not r["y_o_finished"] for r in rows), n),
        "rollout/kept": (float(len(seqs)), n),
        "rollout/reflections": (sum(reflection_count(r["y_o"]) for r in rows), n),
        "refine/pass_rate": (sum(bool(r["y_r_passed"]) for r in rows), n),
        "refine/response_len": (sum(r["y_r_tokens"] for r in rows), n),
        "refine/reflections": (sum(reflection_count(r["y_r"]) for r in rows), n),
        "refine/echo_stripped": (sum(bool(r["echo_stripped"]) for r in rows), n),
        "train/on_refined": (sum(s.labels["target"] == "y_r" for s in seqs), float(len(seqs))),
        "train/response_len": (sum(len(s.response) for s in seqs), float(len(seqs))),
    }
    for status in STATUSES:
        out[f"refine/{status}"] = (sum(r["refine_status"] == status for r in rows), n)
    for joint in JOINT:
        out[f"joint/{joint}"] = (sum(joint_outcome(r["y_o_passed"], r["y_r_passed"]) == joint for r in rows), n)
    return {k: (float(s), c) for k, (s, c) in out.items()}
