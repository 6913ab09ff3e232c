#!/usr/bin/env bash
# One table, one command: base, OPSD baselines, ReNIO, TOPD-filter and TOPD on SmolLM2-135M-Instruct
# (OPSD setting: the only one runnable offline), at equal compute: every run takes the same steps,
# problems per step, rollouts per problem and token budget (TOPD's guidance branches are extra
# teacher/student tokens on top: its own cost, reported in metrics as topd/branches).
#
#   experiments/renio_topd_table.sh [--set KEY=VALUE ...]     # defaults below, ~1 h on 2 cores
#   TD=.venv-vllm/bin/trajdistill experiments/renio_topd_table.sh --set sampling.backend=vllm  # the README's run
#   STEPS=20 PROBLEMS=8 N=4 EVAL=64 PROMPT=preset experiments/renio_topd_table.sh  # presets' scale
# Setup shared with the other scripts (the demo's prompts unless PROMPT=preset): common.sh.
#
# Rows: base (the starting model, from the first run's `before` evaluation), then
#   opsd-fkl-clip  ReNIO's baseline: OPSD, forward KL + per-vocab clip 0.05, T = 1.1, sequence mean
#   renio          renio-opsd (the same, with ReNIO sample weights)
#   opsd-rkl       TOPD's baseline: opsd-reverse-kl
#   topd-filter    topd-opsd-filter (+ near-future filter)
#   topd           topd-opsd (+ filter + near-future guidance)
# Output: $OUT/report/report.md (held-out Avg@k / Pass@k with standard errors, training curves).
# Finished runs (timing.json present) are skipped, so a rerun resumes the table.
OUT=${OUT:-runs/renio-topd}
STEPS=${STEPS:-8}
PROBLEMS=${PROBLEMS:-4}
N=${N:-4}
TOKENS=${TOKENS:-96}
EVAL=${EVAL:-256}      # held out (from builtin:arith-mix's 320) and evaluated: 1-3 point errors
K=${K:-[1]}            # greedy + one sample per problem; [1,4] adds Avg@4 / Pass@4 at 4x the sampling
set -- --set "data.held_out=$EVAL" "$@"
source "$(dirname "$0")/common.sh"

run opsd-fkl-clip outcome-opsd-all.yaml --set loss.aggregation=sequence --set eval.before=true
run renio renio-opsd.yaml --set eval.before=false
run opsd-rkl opsd-reverse-kl.yaml --set eval.before=false
run topd-filter topd-opsd-filter.yaml --set eval.before=false
run topd topd-opsd.yaml --set eval.before=false

.venv/bin/trajdistill report "$OUT"/{opsd-fkl-clip,renio,opsd-rkl,topd-filter,topd} -o "$OUT/report" \
  --title "ReNIO and TOPD vs OPSD (SmolLM2-135M-Instruct, builtin:arith-mix, $STEPS steps x $PROBLEMS x $N rollouts)"
