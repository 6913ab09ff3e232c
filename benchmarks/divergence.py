"""Forward + backward of the full-vocabulary divergence from hidden states: naive vs TRL vs chunked.

Shapes follow SmolLM2's head (hidden 576, V = 49152). Every case runs in a fresh subprocess; its
peak memory is the rise of the process's peak RSS (`ru_maxrss`) over the peak after the inputs
(hidden states, head weight, teacher logits) exist, and its wall and CPU time (user + system of the
process; steadier than wall time when other jobs share the cores) the best of `--repeats` runs.

    .venv/bin/python benchmarks/divergence.py            # the full table (several minutes)
    .venv/bin/python benchmarks/divergence.py --quick    # 2x1024 only

Paths:
- naive: `logits = h @ W^T` ([B, T, V]), `trajdistill.losses.token_divergence`, token mean, backward.
- trl:   `logits = h @ W^T`, TRL's `GKDTrainer.generalized_jsd_loss(..., reduction="batchmean")`, backward.
- ours:  `trajdistill.losses.chunked_divergence_from_hidden` (chunk 512), backward.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from machine import cpu_description  # benchmarks/machine.py (the script's own directory is on sys.path)

HIDDEN, VOCAB = 576, 49152
GIB = 1024**3


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _inputs(batch, length, dtype, teacher_as_hidden):
    import torch

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, length, HIDDEN, generator=gen).to(dtype).requires_grad_(True)
    weight = torch.randn(VOCAB, HIDDEN, generator=gen).mul_(0.05).to(dtype).requires_grad_(True)
    teacher_hidden = torch.randn(batch, length, HIDDEN, generator=gen).to(dtype)
    teacher_weight = torch.randn(VOCAB, HIDDEN, generator=gen).mul_(0.05).to(dtype)
    mask = torch.ones(batch, length, dtype=torch.long)
    if teacher_as_hidden:
        return hidden, weight, mask, {"teacher_hidden": teacher_hidden, "teacher_head_weight": teacher_weight}
    # one [B, T, V] allocation, filled in place by chunks, so setup adds no transient peak
    teacher_logits = torch.empty(batch, length, VOCAB, dtype=dtype)
    for row in range(batch):
        torch.matmul(teacher_hidden[row], teacher_weight.T, out=teacher_logits[row])
    return hidden, weight, mask, {"teacher_logits": teacher_logits}


def _step(path, beta, hidden, weight, mask, teacher):
    import torch

    from trajdistill.losses import chunked_divergence_from_hidden, token_divergence

    if path == "ours":
        loss, _ = chunked_divergence_from_hidden(hidden, weight, mask, divergence="jsd", beta=beta, **teacher)
    elif path == "naive":
        rows = mask.bool()  # masked rows only, as a dense implementation skips padding
        per_token = token_divergence((hidden @ weight.T)[rows], teacher["teacher_logits"][rows], divergence="jsd",
                                     beta=beta)
        loss = per_token.sum() / rows.sum()
    else:
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        labels = torch.where(mask.bool(), 0, -100)
        loss = GKDTrainer.generalized_jsd_loss(hidden @ weight.T, teacher["teacher_logits"], labels=labels,
                                               beta=beta, reduction="batchmean")
    loss.backward()
    value = loss.item()
    hidden.grad = weight.grad = None
    return value


def run_case(case: dict) -> dict:
    """Child process: one path, one shape, one dtype; returns seconds, peak GiB delta and the loss."""
    import torch

    torch.set_num_threads(2)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if case["path"] == "trl":
        from trl.experimental.gkd.gkd_trainer import GKDTrainer  # noqa: F401  (import outside the timing)
    dtype = getattr(torch, case["dtype"])
    tensors = _inputs(case["batch"], case["length"], dtype, case.get("teacher_as_hidden", False))
    baseline = _peak_rss_bytes()
    times, cpu_times, loss = [], [], None
    for _ in range(case["repeats"]):
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        loss = _step(case["path"], case["beta"], *tensors)
        times.append(time.perf_counter() - start)
        cpu_times.append(_cpu_seconds() - cpu_start)
    peak = (_peak_rss_bytes() - baseline) / GIB
    return {**case, "seconds": min(times), "cpu_seconds": min(cpu_times), "peak_gib": peak, "loss": loss}


def _spawn(case: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {**case, "error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:80]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cases(quick: bool, repeats: int):
    for beta in (0.0, 0.5, 1.0):
        for path in ("naive", "trl", "ours"):
            yield dict(path=path, beta=beta, batch=2, length=1024, dtype="float32", repeats=repeats)
        yield dict(path="ours", beta=beta, batch=2, length=1024, dtype="bfloat16", repeats=repeats)
        if quick:
            continue
        for dtype in ("float32", "bfloat16"):
            yield dict(path="ours", beta=beta, batch=8, length=1024, dtype=dtype, repeats=repeats)
        yield dict(path="ours", beta=beta, batch=8, length=1024, dtype="float32", repeats=repeats,
                   teacher_as_hidden=True)
        yield dict(path="naive", beta=beta, batch=8, length=1024, dtype="float32", repeats=repeats)


def _label(row):
    label = row["path"] + (" (teacher hidden)" if row.get("teacher_as_hidden") else "")
    return label


def _table(rows):
    trl = {(r["beta"], r["batch"]): r for r in rows if r["path"] == "trl" and "error" not in r}
    lines = ["| beta | B x T | path | dtype | wall (s) | CPU (s) | peak +RSS (GiB) | wall / TRL | CPU / TRL "
             "| memory / TRL | loss |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['beta']} | {r['batch']}x{r['length']} | {_label(r)} | {r['dtype']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | | |")
            continue
        ref = trl.get((r["beta"], r["batch"]))
        ratios = "- | - | -" if ref is None else (
            f"{r['seconds'] / ref['seconds']:.2f} | {r['cpu_seconds'] / ref['cpu_seconds']:.2f} | "
            f"{r['peak_gib'] / ref['peak_gib']:.3f}")
        lines.append(f"{head} {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['peak_gib']:.2f} | {ratios} "
                     f"| {r['loss']:.5f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="2x1024 only")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case; the best time is reported")
    parser.add_argument("--naive-limit-gib", type=float, default=14.0,
                        help="skip the 8x1024 naive case when 4x its 2x1024 peak exceeds this")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    rows = []
    for case in _cases(args.quick, args.repeats):
        if case["path"] == "naive" and case["batch"] == 8:
            small = [r for r in rows if r["path"] == "naive" and r["beta"] == case["beta"] and "error" not in r]
            expected = 4 * small[0]["peak_gib"] if small else float("inf")
            if expected > args.naive_limit_gib:
                rows.append({**case, "error": f"skipped: ~{expected:.0f} GiB expected"})
                continue
        rows.append(_spawn(case))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"CPU: {cpu_description()}")
    print(_table(rows))


if __name__ == "__main__":
    main()
