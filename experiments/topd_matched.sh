#!/usr/bin/env bash
# Is TOPD's gain its near-future guidance, or the extra teacher-written text it trains on? TOPD
# (filter + guidance) against its reverse-KL OPSD baseline and against the same baseline given as
# many extra teacher-written continuations per rollout as TOPD's guidance writes, as an off-policy
# share sampled from the privileged teacher. One table, one command; the same sizes and prompts as
# experiments/renio_topd_table.sh (8 steps x 4 problems x 4 student rollouts, 96 tokens, 256
# held-out problems, greedy + one sample each).
#
#   TD=.venv-vllm/bin/trajdistill experiments/topd_matched.sh --set sampling.backend=vllm
#
# Rows:
#   opsd-rkl          opsd-reverse-kl: 4 student rollouts per problem
#   opsd-rkl-teacher  the same, plus the teacher's samples: n = 4 + EXTRA slots per problem, each
#                     slot the teacher's with probability EXTRA / (4 + EXTRA) (opsd.off_policy_fraction,
#                     source teacher), so on average 4 student rollouts and EXTRA teacher samples; the
#                     student is trained along the teacher's samples under its own prompt
#   topd              topd-opsd: filter + guidance (m = 2 branches of H = 16 greedy teacher tokens at
#                     kept high-divergence positions; 1.75 branches per rollout at this scale)
# EXTRA (default 7 = 1.75 x 4) matches TOPD's branch count per problem. A teacher sample is a whole
# answer (about 27 tokens here) where a branch is at most 16 tokens, so the matched baseline gets at
# least as much teacher text as TOPD. TOPD normalises its branches on their own (lambda_g times their
# token mean); the baseline's teacher samples share the one token mean with the student's rollouts.
# Output: $OUT/report/report.md (paired greedy changes with standard errors and the smallest
# detectable change). Finished runs are skipped, so a rerun resumes the table.
OUT=${OUT:-runs/topd-matched}
STEPS=${STEPS:-8}
PROBLEMS=${PROBLEMS:-4}
N=${N:-4}
TOKENS=${TOKENS:-96}
EVAL=${EVAL:-256}
K=${K:-[1]}
EXTRA=${EXTRA:-7}
set -- --set "data.held_out=$EVAL" "$@"
source "$(dirname "$0")/common.sh"

run opsd-rkl opsd-reverse-kl.yaml --set eval.before=true
run opsd-rkl-teacher opsd-reverse-kl.yaml --set eval.before=false --set "sampling.n=$((N + EXTRA))" \
  --set "opsd.off_policy_fraction=$(.venv/bin/python -c "print($EXTRA / ($N + $EXTRA))")" \
  --set opsd.off_policy_source=teacher
run topd topd-opsd.yaml --set eval.before=false

.venv/bin/trajdistill report "$OUT"/{opsd-rkl,opsd-rkl-teacher,topd} -o "$OUT/report" \
  --title "TOPD vs reverse-KL OPSD given as many teacher-written continuations (SmolLM2-135M-Instruct, builtin:arith-mix)"
