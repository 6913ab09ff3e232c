#!/usr/bin/env bash
# One table, one command: base, OPSD baselines, ReNIO, TOPD-filter and TOPD on SmolLM2-135M-Instruct
# (OPSD setting: the only one runnable offline), at equal compute: every run takes the same steps,
# problems per step, rollouts per problem and token budget (TOPD's guidance branches are extra
# teacher/student tokens on top: its own cost, reported in metrics as topd/branches).
#
#   nice -n 5 experiments/renio_topd_table.sh                 # defaults below, ~1-2 h on 2 shared cores
#   STEPS=20 PROBLEMS=8 N=4 EVAL=64 experiments/renio_topd_table.sh   # the presets' own scale
#
# Rows: base (the starting model, from the first run's `before` evaluation), then
#   opsd-fkl-clip  ReNIO's baseline: OPSD, forward KL + per-vocab clip 0.05, T = 1.1, sequence mean
#   renio          renio-opsd (the same, with ReNIO sample weights)
#   opsd-rkl       TOPD's baseline: opsd-reverse-kl
#   topd-filter    topd-opsd-filter (+ near-future filter)
#   topd           topd-opsd (+ filter + near-future guidance)
# Output: $OUT/report/report.md (held-out Avg@k / Pass@k with standard errors, training curves).
# Finished runs (timing.json present) are skipped, so a rerun resumes the table.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/renio-topd}
STEPS=${STEPS:-8}
PROBLEMS=${PROBLEMS:-4}
N=${N:-4}
TOKENS=${TOKENS:-128}
EVAL=${EVAL:-32}
K=${K:-[1,4]}
SEED=${SEED:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # on shared cores one thread is several times faster
COMMON=(--set optim.steps="$STEPS" --set optim.problems_per_step="$PROBLEMS" --set sampling.n="$N"
        --set sampling.max_new_tokens="$TOKENS" --set eval.max_new_tokens="$TOKENS" --set data.max_eval="$EVAL"
        --set "eval.k=$K" --set seed="$SEED")

run() {
  local name=$1 preset=$2
  shift 2
  if [ -f "$OUT/$name/timing.json" ]; then echo "skip $name (done)"; return; fi
  echo "== $name ($preset)"
  nice -n 5 .venv/bin/trajdistill train "configs/$preset" "${COMMON[@]}" -o "$OUT/$name" "$@"
}

run opsd-fkl-clip outcome-opsd-all.yaml --set loss.aggregation=sequence --set eval.before=true
run renio renio-opsd.yaml --set eval.before=false
run opsd-rkl opsd-reverse-kl.yaml --set eval.before=false
run topd-filter topd-opsd-filter.yaml --set eval.before=false
run topd topd-opsd.yaml --set eval.before=false

.venv/bin/trajdistill report "$OUT"/{opsd-fkl-clip,renio,opsd-rkl,topd-filter,topd} -o "$OUT/report" \
  --title "ReNIO and TOPD vs OPSD (SmolLM2-135M-Instruct, builtin:arith-mix, $STEPS steps x $PROBLEMS x $N rollouts)"
