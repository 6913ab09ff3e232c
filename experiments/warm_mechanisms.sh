#!/usr/bin/env bash
# ReNIO (training, the AUC of its weights, the outcome-filtering table) and TRD (against OPSD, and
# its refinement table) at 256 held-out problems under strict grading, each against its own
# baseline, from a student that already boxes its answers.
#
#   TD=.venv-vllm/bin/trajdistill experiments/warm_mechanisms.sh --set sampling.backend=vllm
#   LANE=renio ... / LANE=trd ...   only that half (after the warm start), e.g. one per core
#
# Why a warm start: SmolLM2-135M-Instruct answers 0 of 256 held-out problems in a \boxed{} (greedy)
# and 1 % of its samples, so under strict grading its rollouts are all "incorrect": ReNIO's weights
# have nothing to separate (an AUC needs both outcomes), an outcome filter keeps all or nothing, and
# runs from the base model stay at 0 (+0.0 +- 0.0 in docs/results/renio-topd-256-report.md). Stage 0
# runs the demo's recipe (configs/demo.yaml: 18 steps of privileged-teacher samples) on the 64
# training problems; every run below starts from its exported model ($OUT/warm/final).
#
# Runs (8 steps x 4 problems x 4 rollouts, 96 tokens, as experiments/renio_topd_table.sh):
#   fkl-clip        ReNIO's baseline: OPSD, forward KL + per-vocab clip 0.05, T 1.1, sequence mean
#                   (also the outcome-filtering table's "all" row; its `before` evaluation is the
#                   warm start's row)
#   renio           renio-opsd: the same with ReNIO's sample weights
#   only-incorrect  the baseline trained only on rollouts the verifier marks incorrect
#   only-correct    ... only on the correct ones
#   renio-auc/      ReNIO's score against verified correctness on 256 problems x 2 rollouts
#                   (experiments/renio_auc.py; problems of the 64-problem held-out split's complement)
#   trd-vs-opsd/    experiments/trd_vs_opsd.sh: TRD against forward-KL OPSD, 64 training problems,
#                   8 per step, one rollout each
#   trd-refinement/ experiments/trd_refinement_table.py on 256 problems
# Output: $OUT/report/report.md (ReNIO and filtering), $OUT/trd-vs-opsd/summary.md,
# $OUT/renio-auc/auc.json, $OUT/trd-refinement/rollouts/trd-table.md. Finished parts are skipped.
OUT=${OUT:-runs/warm-256}
STEPS=${STEPS:-8}
PROBLEMS=${PROBLEMS:-4}
N=${N:-4}
TOKENS=${TOKENS:-96}
EVAL=${EVAL:-256}
K=${K:-[1]}
LANE=${LANE:-all}
ARGS=("$@")   # the script's own overrides (e.g. the sampling backend), for every stage
set -- --set "data.held_out=$EVAL" "$@"
source "$(dirname "$0")/common.sh"
PY=$(dirname "$TD")/python
WARM=$OUT/warm/final
PROMPTS=(--set 'prompt.instruction=Put your final answer within \boxed{}.'
         --set 'prompt.privileged="{problem}\n\nReference solution:\n{reference}\n\n{instruction}"')

if [ ! -f "$OUT/warm/timing.json" ]; then
  echo "== warm (configs/demo.yaml)"
  nice -n 5 "$TD" train configs/demo.yaml --set "data.held_out=$EVAL" --set eval.before=false \
    --set eval.after=false "${ARGS[@]}" -o "$OUT/warm"
fi
COMMON+=(--set "model.name=$WARM")

if [ "$LANE" != trd ]; then
  run fkl-clip outcome-opsd-all.yaml --set loss.aggregation=sequence --set eval.before=true
  run renio renio-opsd.yaml --set eval.before=false
  run only-incorrect outcome-opsd-incorrect.yaml --set loss.aggregation=sequence --set eval.before=false
  run only-correct outcome-opsd-correct.yaml --set loss.aggregation=sequence --set eval.before=false
  .venv/bin/trajdistill report "$OUT"/{fkl-clip,renio,only-incorrect,only-correct} -o "$OUT/report" \
    --title "ReNIO and outcome filtering from a warm start (SmolLM2-135M-Instruct, builtin:arith-mix, 256 held out)"
  # 256 problems: the complement of a 64-problem held-out split (it contains the 64 warm-start problems)
  nice -n 5 "$PY" experiments/renio_auc.py --problems 256 --n 2 --out "$OUT/renio-auc" --set "model.name=$WARM" \
    --set data.held_out=64 --set data.max_train=256 --set "sampling.max_new_tokens=$TOKENS" "${PROMPTS[@]}" "${ARGS[@]}"
fi
if [ "$LANE" != renio ]; then
  OUT="$OUT/trd-vs-opsd" EVAL="$EVAL" TRAIN=64 TD="$TD" \
    EXTRA="--set model.name=$WARM --set data.held_out=$EVAL ${ARGS[*]}" experiments/trd_vs_opsd.sh
  nice -n 5 "$PY" experiments/trd_refinement_table.py --problems 256 --out "$OUT/trd-refinement" \
    --set "model.name=$WARM" --set data.held_out=64 --set data.max_train=256 "${PROMPTS[@]}" "${ARGS[@]}"
fi
