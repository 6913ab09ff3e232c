"""Experiment trackers next to `metrics.jsonl`: TensorBoard event files and Weights & Biases.

`logging.report_to: [tensorboard, wandb]`. TensorBoard writes `RUN/tensorboard/`; W&B runs in
offline mode unless `WANDB_MODE` says otherwise (this machine, and many clusters, have no route to
its servers; `wandb sync RUN/wandb/offline-run-*` uploads later). Only the main process logs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from trajdistill import UserError


class Trackers:
    def __init__(self, report_to: list[str], run_dir: Path, config: dict[str, Any], run_name: str):
        self.writers: list[Any] = []
        for name in report_to:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise UserError("logging.report_to tensorboard needs the tensorboard package: "
                                    "pip install tensorboard") from None
                self.writers.append(("tensorboard", SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))))
            elif name == "wandb":
                try:
                    import wandb
                except ImportError:
                    raise UserError("logging.report_to wandb needs the wandb package: pip install wandb") from None
                os.environ.setdefault("WANDB_MODE", "offline")
                run = wandb.init(dir=str(run_dir), name=run_name, config=config, resume="allow",
                                 id=run_name.replace("/", "-"))
                self.writers.append(("wandb", run))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for key, value in scalars.items():
                    writer.add_scalar(key, value, step)
                writer.flush()
            else:
                writer.log(scalars, step=step)

    def close(self) -> None:
        for kind, writer in self.writers:
            writer.close() if kind == "tensorboard" else writer.finish()
        self.writers = []
