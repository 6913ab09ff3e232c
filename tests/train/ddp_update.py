"""Run two optimisation steps on a fixed global batch; save the gradients and trained weights.

Launched by tests/train/test_multiprocess_identity.py as one process and under
`torchrun --nproc_per_node 2` (DDP or FSDP2). The runs must produce the same update. The script
also checkpoints after the first step, exports `final/` after the second, then resumes from the
checkpoint and repeats the second step: the resumed weights are saved as `resumed.*`.

    python ddp_update.py OUT.safetensors AGGREGATION [STRATEGY] [lora|full|full-untied] [ROWS]

ROWS (default 8) sequences make the global batch: 5 gives the two processes 3 and 2 sequences, i.e.
2 micro-batches against 1. ROWS may also list the sequences (`0,1`: sequence 0, whose response is one
token, for the first process, sequence 1 for the second).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from trajdistill.config import load_config
from trajdistill.methods.base import StepResult
from trajdistill.models import load_tokenizer, tiny_model
from trajdistill.train.batch import TrainSequence
from trajdistill.train.checkpoint import export_model, trainable_state
from trajdistill.train.distributed import finish_process
from trajdistill.train.loop import Trainer
from trajdistill.train.run import build


def fixed_sequences(step: int) -> list[TrainSequence]:
    gen = torch.Generator().manual_seed(100 + step)
    seqs = []
    for i in range(8):  # uneven lengths: per-micro-batch normalisation would give a different update
        prompt = torch.randint(10, 2000, (3 + i % 3,), generator=gen).tolist()
        response = torch.randint(10, 2000, (1 + (i * 5) % 7,), generator=gen).tolist()
        teacher = torch.randint(10, 2000, (6,), generator=gen).tolist() + prompt
        seqs.append(TrainSequence(prompt, response, teacher_prompt=teacher, passed=i % 2 == 0))
    return seqs


def main(out: str, aggregation: str, strategy: str = "ddp", weights: str = "lora", rows: str = "8") -> None:
    torch.set_num_threads(1)
    tok = load_tokenizer("smollm2-135m-instruct")
    run_dir = Path(out).parent / "run"
    cfg = load_config(None, ["method=opsd", "lora.r=4", "lora.alpha=8", "optim.problems_per_step=8",
                             "optim.micro_batch_size=2", "optim.lr=0.01", "optim.warmup_ratio=0",
                             "optim.schedule=constant", f"loss.aggregation={aggregation}", "loss.chunk_size=5",
                             f"output_dir={run_dir}", "optim.steps=2", f"distributed.strategy={strategy}",
                             f"lora.enabled={weights == 'lora'}"])
    student = tiny_model(tok, seed=0, tie_word_embeddings=weights != "full-untied")
    ctx, method, accelerator = build(cfg, Path(out).parent, model=student, tokenizer=tok)
    batches = {s: fixed_sequences(s) for s in range(2)}
    method.collect = lambda items, step: StepResult([batches[step][i] for i in items])
    trainer = Trainer(cfg, run_dir, method, ctx, list(range(8)), accelerator=accelerator)
    chosen = list(range(int(rows))) if rows.isdigit() else [int(i) for i in rows.split(",")]
    trainer.order.indices = lambda step: chosen  # the same fixed global batch, in order
    model = trainer.model
    grads = {}
    calls = []
    step_fn = trainer.optimizer.step

    def capture_then_step(*args, **kwargs):  # the synchronised gradient the optimizer receives
        for name, p in getattr(model, "module", model).named_parameters():
            if p.grad is not None:
                g = p.grad.detach()
                grads[f"step{len(calls)}.{name}"] = (g.full_tensor() if hasattr(g, "full_tensor") else g).clone()
        calls.append(1)
        return step_fn(*args, **kwargs)

    trainer.optimizer.step = capture_then_step
    first = trainer.train_step(0)
    losses = [first["loss"]]
    means = [first[k] for k in ("kl/mean", "kl/correct", "kl/incorrect")]  # fillers must not count
    trainer._checkpoint(1)
    losses.append(trainer.train_step(1)["loss"])
    trained = {k: v.clone() for k, v in trainable_state(model).items()}
    export_model(model, tok, run_dir / "final")
    assert trainer.resume() == 1
    trainer.train_step(1)
    resumed = trainable_state(model)
    if trainer.rank == 0:
        state = {f"weight.{k}": v for k, v in trained.items()}
        state.update({f"resumed.{k}": v for k, v in resumed.items()})
        state.update({f"grad0.{k}": v for k, v in grads.items() if k.startswith("step0.")})
        state["loss"] = torch.tensor(losses, dtype=torch.float64)
        state["kl_means"] = torch.tensor(means, dtype=torch.float64)
        save_file(state, out)
    if accelerator:  # a clean teardown: a rank exiting while gloo threads run aborts the process
        finish_process(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
