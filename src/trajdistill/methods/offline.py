"""SFT, REDI, DPO and SimPO: sequence objectives on a fixed data set of teacher traces.

    items = rows of the method's `dataset` (prompt/completion for sft; prompt/chosen/rejected otherwise)
    for each optimisation step (the shared Trainer picks `optim.problems_per_step` rows):
        log p(y|x) = sum of the completion tokens' log-probs, |y| = their count (EOS included)
        sft:   L = mean_i [ -log p(y_i|x_i)/|y_i| ]
        redi:  L = mean_pairs [ -log p(y_w|x)/|y_w| + alpha * log p(y_l|x)/|y_l| ]
        dpo:   L = -mean_pairs log sigmoid(beta((c - c_ref) - (r - r_ref)))
        simpo: L = -mean_pairs log sigmoid(beta(c/|c| - r/|r|) - gamma)

Nothing is sampled during training; `collect` hands the step's rows through unchanged. The loss of
a micro-batch is its sum divided by the global number of rows of the step (`counts`), so gradient
accumulation and several processes give exactly the mean over the optimisation batch.

DPO's reference log-probs are computed once, before the first step, and cached in the run
directory (`reference_logps.jsonl`, keyed by a hash of the tokens). The reference is
`dpo.reference` if set; otherwise the starting model: under LoRA the model with its adapter
disabled (exactly the loaded weights), without LoRA the weights before any update (scoring happens
before training starts, so no frozen copy is kept). Start stage 2 from the exported stage-1 model
(`model.name: runs/.../sft/final`) and the reference is the SFT model, as in the REDI paper.
"""

from __future__ import annotations

import contextlib

import torch
from pydantic import Field
from rich.console import Console

from trajdistill import UserError
from trajdistill.data.traces import read_rows
from trajdistill.files import append_jsonl, read_jsonl
from trajdistill.losses.sequence import dpo_loss, pair_logp_metrics, redi_loss, sft_loss, simpo_loss
from trajdistill.methods.base import Method, MethodOptions, StepResult
from trajdistill.methods.offline_data import Example, Pair, completion_ids, prompt_ids, sequence_logps

__all__ = ["DPO", "REDI", "SFT", "DPOOptions", "Example", "OfflineMethod", "OfflineOptions", "Pair", "PairMethod",
           "REDIOptions", "SimPO", "SimPOOptions", "completion_ids", "prompt_ids", "sequence_logps"]

console = Console(stderr=True)


class OfflineOptions(MethodOptions):
    """Options every offline method shares (the section named after the method, e.g. `sft:`).

    Data sets follow Hugging Face conventions: `prompt`/`completion` rows for `sft`,
    `prompt`/`chosen`/`rejected` rows for `redi`, `dpo` and `simpo` (strings: the prompt is the
    user turn, rendered with the model's chat template; or conversational message lists).
    """

    dataset: str | None = None
    """Training data: a .jsonl / .parquet file or a saved `datasets` directory (required)."""
    max_prompt_tokens: int = Field(512, ge=1)
    """Rows whose templated prompt is longer are dropped (counted in the log)."""
    max_response_tokens: int = Field(512, ge=1)
    """Rows with a longer completion (chosen or rejected) are dropped."""


class REDIOptions(OfflineOptions):
    alpha: float = Field(0.8, ge=0.0)
    """Weight of the rejected term: 0 = SFT, 1 = symmetric (collapses); authors: 0.8."""


class DPOOptions(OfflineOptions):
    beta: float = Field(0.1, gt=0.0)
    """DPO's beta (the REDI paper's tuned baseline: 0.001, its App. C.4)."""
    reference: str | None = None
    """Reference model; None: the starting model (adapter disabled under LoRA), i.e. the stage-1
    SFT model when `model.name` is its exported directory. Scored once, before training."""


class SimPOOptions(OfflineOptions):
    beta: float = Field(2.0, gt=0.0)
    """SimPO's beta (the REDI paper's baseline: 2.0, its App. C.4)."""
    gamma: float = 1.0
    """SimPO's target margin gamma (the REDI paper's baseline: 1.0)."""


class OfflineMethod(Method):
    """Shared plumbing: load and tokenise the method's `dataset`, hand rows through, count them."""

    Options = OfflineOptions
    uses_loss_section = False
    progress_metrics = (("margin", "logp/margin"),)
    columns: tuple[str, ...] = ()
    unit = "pairs"

    @property
    def spec(self):
        return self.opts

    def rows(self) -> list[dict]:
        if not self.spec.dataset:
            raise UserError(f"method {self.cfg.method} needs `{self.cfg.method}.dataset` (see `trajdistill traces`)")
        rows = read_rows(self.spec.dataset)
        if not rows:
            raise UserError(f"{self.spec.dataset}: the data set is empty")
        missing = [c for c in self.columns if c not in rows[0]]
        if missing:
            raise UserError(f"{self.spec.dataset}: method {self.cfg.method} needs columns {list(self.columns)}, "
                            f"missing {missing} (have {sorted(rows[0])})")
        return rows

    def train_items(self, problems) -> list:
        """The data set replaces the problems (these only provide the held-out evaluation)."""
        rows = self.rows()
        units = [u for u in (self.tokenise(r) for r in rows) if u is not None]
        dropped = len(rows) - len(units)
        if self.ctx.rank == 0:
            console.print(f"{self.cfg.method}: {len(units)} {self.unit} from {self.spec.dataset}"
                          + (f" ({dropped} over the length limits dropped)" if dropped else ""))
        if not units:
            raise UserError(f"{self.spec.dataset}: no rows within {self.cfg.method}.max_prompt_tokens / max_response_tokens")
        return units

    def fits(self, prompt: list[int], *responses: list[int]) -> bool:
        return (len(prompt) <= self.spec.max_prompt_tokens
                and all(len(r) <= self.spec.max_response_tokens for r in responses))

    def collect(self, items: list, step: int) -> StepResult:
        return StepResult(list(items))

    def checked_prompts(self, problem):
        return ()

    def logps(self, prompts, responses):
        return sequence_logps(self.ctx.model, self.ctx.pad_id, prompts, responses, self.ctx.device,
                              self.cfg.loss.chunk_size)


class SFT(OfflineMethod):
    """`method: sft` (REDI stage 1): per-sequence token-mean NLL of the completions."""

    columns = ("prompt", "completion")
    unit = "sequences"

    def tokenise(self, row: dict) -> Example | None:
        prompt = prompt_ids(self.ctx.tokenizer, row["prompt"], self.cfg.prompt.system)
        completion = completion_ids(self.ctx.tokenizer, row["completion"])
        return Example(prompt, completion) if self.fits(prompt, completion) else None

    def counts(self, units: list[Example]) -> dict[str, float]:
        return {"sequences": float(len(units)), "tokens": float(sum(len(u.completion) for u in units))}

    def loss(self, units: list[Example], totals: dict) -> tuple[torch.Tensor, dict]:
        logps, lengths = self.logps([u.prompt for u in units], [u.completion for u in units])
        return sft_loss(logps, lengths, normalizer=totals["sequences"])


class PairMethod(OfflineMethod):
    """Chosen and rejected completions of a micro-batch go through one forward pass."""

    columns = ("prompt", "chosen", "rejected")

    def tokenise(self, row: dict) -> Pair | None:
        tok = self.ctx.tokenizer
        prompt = prompt_ids(tok, row["prompt"], self.cfg.prompt.system)
        chosen, rejected = completion_ids(tok, row["chosen"]), completion_ids(tok, row["rejected"])
        return Pair(prompt, chosen, rejected) if self.fits(prompt, chosen, rejected) else None

    def counts(self, units: list[Pair]) -> dict[str, float]:
        return {"pairs": float(len(units)), "tokens": float(sum(len(u.chosen) + len(u.rejected) for u in units))}

    def pair_logps(self, units: list[Pair]):
        prompts = [u.prompt for u in units]
        logps, lengths = self.logps(prompts + prompts, [u.chosen for u in units] + [u.rejected for u in units])
        n = len(units)
        return logps[:n], lengths[:n], logps[n:], lengths[n:]

    def loss(self, units: list[Pair], totals: dict) -> tuple[torch.Tensor, dict]:
        return self.objective(units, *self.pair_logps(units), normalizer=totals["pairs"])


class REDI(PairMethod):
    """`method: redi`: asymmetric REINFORCE-style objective, alpha = `redi.alpha`."""

    Options = REDIOptions

    def objective(self, units, c, c_len, r, r_len, *, normalizer):
        return redi_loss(c, c_len, r, r_len, alpha=self.spec.alpha, normalizer=normalizer)


class SimPO(PairMethod):
    """`method: simpo`: beta = `simpo.beta`, gamma = `simpo.gamma`, no reference."""

    Options = SimPOOptions

    def objective(self, units, c, c_len, r, r_len, *, normalizer):
        return simpo_loss(c, c_len, r, r_len, beta=self.spec.beta, gamma=self.spec.gamma, normalizer=normalizer)


class DPO(PairMethod):
    """`method: dpo`: beta = `dpo.beta`; reference log-probs scored once and cached."""

    Options = DPOOptions

    def train_items(self, problems) -> list:
        pairs = super().train_items(problems)
        self.attach_reference(pairs)
        return pairs

    def objective(self, units, c, c_len, r, r_len, *, normalizer):
        ref_c = torch.tensor([u.ref_chosen for u in units], dtype=c.dtype, device=c.device)
        ref_r = torch.tensor([u.ref_rejected for u in units], dtype=r.dtype, device=r.device)
        loss, metrics = dpo_loss(c, r, ref_c, ref_r, beta=self.spec.beta, normalizer=normalizer)
        metrics.update(pair_logp_metrics(c.detach(), c_len, r.detach(), r_len))
        return loss, metrics

    # -- the reference ----------------------------------------------------------------------
    def attach_reference(self, pairs: list[Pair]) -> None:
        path = self.ctx.run_dir / "reference_logps.jsonl" if self.ctx.run_dir is not None else None
        cached = {row["key"]: row for row in read_jsonl(path)} if path is not None and path.exists() else {}
        todo = [p for p in pairs if p.key() not in cached]
        if todo:
            if self.ctx.rank == 0:
                console.print(f"dpo: scoring {len(todo)} pairs with the reference model")
            with self.reference_model() as model:
                size = self.cfg.optim.micro_batch_size
                for start in range(0, len(todo), size):
                    chunk = todo[start : start + size]
                    prompts = [u.prompt for u in chunk]
                    with torch.no_grad():
                        logps, _ = sequence_logps(model, self.ctx.pad_id, prompts + prompts,
                                                  [u.chosen for u in chunk] + [u.rejected for u in chunk],
                                                  self.ctx.device, self.cfg.loss.chunk_size)
                    logps = logps.float().cpu().tolist()
                    for i, u in enumerate(chunk):
                        row = {"key": u.key(), "chosen": logps[i], "rejected": logps[len(chunk) + i]}
                        cached[row["key"]] = row
                        if path is not None and self.ctx.rank == 0:
                            path.parent.mkdir(parents=True, exist_ok=True)
                            append_jsonl(path, row)
        for p in pairs:
            row = cached[p.key()]
            p.ref_chosen, p.ref_rejected = row["chosen"], row["rejected"]

    @contextlib.contextmanager
    def reference_model(self):
        model = self.ctx.model
        was_training = model.training
        if self.spec.reference:
            from trajdistill.models import load_model

            ref = load_model(self.spec.reference, dtype=self.cfg.model.dtype, device=str(self.ctx.device),
                             trust_remote_code=self.cfg.model.trust_remote_code).eval()
            try:
                yield ref
            finally:
                del ref
            return
        model.eval()
        off = model.disable_adapter() if self.cfg.lora.enabled else contextlib.nullcontext()
        try:
            with off:
                yield model
        finally:
            model.train(was_training)
