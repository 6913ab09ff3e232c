#!/usr/bin/env bash
# ReNIO's controlled filtering experiment at small scale, OPSD setting: train only on
# incorrect rollouts, only on correct ones, or on all, with the same steps and rollouts; compare
# held-out Avg@k / Pass@k, response length and reflection counts ("wait", "actually", ...).
# The paper's finding to check: incorrect-only beats correct-only, and correct-only shortens
# reasoning and weakens reflection.
#
#   experiments/renio_filtering.sh [--set KEY=VALUE ...]   # OUT, STEPS, PROBLEMS, N, TOKENS, EVAL below
#
# Note: outcome filters drop rollouts, so the runs differ in trained tokens per step (logged as
# rollout/kept); that is the paper's protocol (filtering, not reweighting).
OUT=${OUT:-runs/renio-filtering}
STEPS=${STEPS:-8}
PROBLEMS=${PROBLEMS:-4}
N=${N:-4}
TOKENS=${TOKENS:-96}
EVAL=${EVAL:-48}
K=${K:-[1,4]}
source "$(dirname "$0")/common.sh"

for f in all incorrect correct; do
  before=false; [ "$f" = all ] && before=true
  run "$f" "outcome-opsd-$f.yaml" --set eval.before=$before
done

.venv/bin/python experiments/renio_filtering_table.py "$OUT"/{all,incorrect,correct} | tee "$OUT/table.md"
.venv/bin/trajdistill report "$OUT"/{all,incorrect,correct} -o "$OUT/report" --title "Outcome filters (OPSD, ReNIO paper's protocol)"
