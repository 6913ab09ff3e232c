#!/usr/bin/env bash
# ReNIO's (seed 000) controlled filtering experiment at small scale, OPSD setting: train only on
# incorrect rollouts, only on correct ones, or on all, with the same steps and rollouts; compare
# held-out Avg@k / Pass@k, response length and reflection counts ("wait", "actually", ...).
# The paper's finding to check: incorrect-only beats correct-only, and correct-only shortens
# reasoning and weakens reflection.
#
#   nice -n 5 experiments/renio_filtering.sh        # OUT, STEPS, PROBLEMS, N, TOKENS, EVAL as below
#
# Note: outcome filters drop rollouts, so the runs differ in trained tokens per step (logged as
# rollout/kept); that is the paper's protocol (filtering, not reweighting).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/renio-filtering}
STEPS=${STEPS:-8}
PROBLEMS=${PROBLEMS:-4}
N=${N:-4}
TOKENS=${TOKENS:-128}
EVAL=${EVAL:-32}
K=${K:-[1,4]}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--set optim.steps="$STEPS" --set optim.problems_per_step="$PROBLEMS" --set sampling.n="$N"
        --set sampling.max_new_tokens="$TOKENS" --set eval.max_new_tokens="$TOKENS" --set data.max_eval="$EVAL"
        --set "eval.k=$K")

for f in all incorrect correct; do
  if [ -f "$OUT/$f/timing.json" ]; then echo "skip $f (done)"; continue; fi
  before=false; [ "$f" = all ] && before=true
  echo "== outcome filter: $f"
  nice -n 5 .venv/bin/trajdistill train "configs/outcome-opsd-$f.yaml" "${COMMON[@]}" --set eval.before=$before -o "$OUT/$f"
done

.venv/bin/python experiments/renio_filtering_table.py "$OUT"/{all,incorrect,correct} | tee "$OUT/table.md"
.venv/bin/trajdistill report "$OUT"/{all,incorrect,correct} -o "$OUT/report" --title "Outcome filters (OPSD, seed 000 protocol)"
