#!/usr/bin/env bash
# TRD (OPSD setting) against forward-KL OPSD at equal compute on the same data, then one report.
#
#   nice -n 5 experiments/trd_vs_opsd.sh            # SmolLM2-135M-Instruct, builtin:arith-mix
#   TRAIN=128 EVAL=64 experiments/trd_vs_opsd.sh    # bigger (slower) run
#   EXTRA="--set trd.dataset=runs/trd-refinement-table/rollouts/trd.parquet" TOKENS=160 \
#       experiments/trd_vs_opsd.sh                  # TRD reuses experiments/trd_refinement_table.py's
#                                                   # stages 1-2 (its y_o were sampled with budget 160)
#
# Equal compute means: the same training problems seen in the same order, the same number of
# updates with the same batch (problems per step, n = 1 rollout each), the same optimiser and LoRA,
# and the same stage-1 sampling (temperature 0.6, top_p 0.95, top_k 20; the TRD paper's settings) for
# both. TRD spends one extra sampling pass (the refinement); timing.json of each run records it.
# The baseline trains along its own rollouts y_o with the plain OPSD teacher context; TRD along
# the refined y_r with the refinement prompt as teacher context. Both log the TRD paper's C.5
# diagnostics (diag/*, kl/correct, kl/incorrect) to metrics.jsonl.
#
# Output: $OUT/report/report.md (held-out greedy, Avg@k, Pass@k with standard errors, training
# curves), $OUT/summary.md (that table plus TRD's refinement table).
OUT=${OUT:-runs/trd-vs-opsd}
TRAIN=${TRAIN:-64}          # training problems (one epoch of TRD = TRAIN / PER_STEP updates)
EVAL=${EVAL:-32}            # held-out problems
PER_STEP=${PER_STEP:-8}
TOKENS=${TOKENS:-128}       # response budget for rollouts, refinements and evaluation
STEPS=$(( (TRAIN + PER_STEP - 1) / PER_STEP )) PROBLEMS=$PER_STEP N=1 K="[1,4]"
read -ra EXTRA <<< "${EXTRA:-}"   # more overrides for both runs, e.g. EXTRA="--set model.name=DIR"
source "$(dirname "$0")/common.sh" "${EXTRA[@]}"   # the demo's prompts unless PROMPT=preset
COMMON+=(--set data.max_train="$TRAIN" --set optim.epochs=null --set sampling.temperature=0.6
         --set sampling.top_p=0.95 --set sampling.top_k=20)

# The base model is evaluated once (TRD's run); the report's "base" row comes from it.
if [ "${REPORT_ONLY:-0}" != 1 ]; then   # REPORT_ONLY=1: only rebuild the report of finished runs
  nice -n 5 "$TD" train configs/trd-opsd.yaml "${COMMON[@]}" -o "$OUT/trd"
  nice -n 5 "$TD" train configs/opsd-forward-kl.yaml "${COMMON[@]}" --set eval.before=false -o "$OUT/opsd-forward-kl"
fi
"$TD" report "$OUT/trd" "$OUT/opsd-forward-kl" -o "$OUT/report" \
    --title "TRD vs forward-KL OPSD (SmolLM2-135M-Instruct, arith-mix, equal compute)" > /dev/null

{
  echo "# TRD vs forward-KL OPSD"
  echo
  sed -n '/## Held-out results/,/## Configuration differences/p' "$OUT/report/report.md" | sed '$d'
  for run in trd opsd-forward-kl; do
    printf -- "- %s: %.1f min wall-clock (training pipeline + evaluations)\n" "$run" \
      "$(.venv/bin/python -c "import json;print(json.load(open('$OUT/$run/timing.json'))['seconds']/60)")"
  done
  echo
  echo "### Training diagnostics (TRD paper, appendix C.5), first step -> last step"
  echo
  .venv/bin/python - "$OUT/trd" "$OUT/opsd-forward-kl" <<'PY'
import json, math, sys
keys = ["kl/mean", "kl/correct", "kl/incorrect", "diag/teacher_epistemic_mass", "diag/log_ppl_gap",
        "diag/teacher_nll", "diag/student_nll", "train/response_len", "rollout/pass_rate", "refine/pass_rate"]
print("| run | " + " | ".join(keys) + " |")
print("|---" * (len(keys) + 1) + "|")
for run in sys.argv[1:]:
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    def cell(k):
        v = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
        return f"{v[0]:.3g} -> {v[-1]:.3g}" if v else "-"
    print(f"| {run.rsplit('/', 1)[-1]} | " + " | ".join(cell(k) for k in keys) + " |")
PY
  echo
  cat "$OUT/trd/rollouts/trd-table.md"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
