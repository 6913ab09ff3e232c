# Shared setup of the on-policy experiment scripts (sourced, not run).
# Sizes come from the environment (defaults in each script); every run of a script gets COMMON.
# By default the runs use the demo's prompts (configs/demo.yaml): with them SmolLM2-135M answers
# in about 30 tokens, so a 64-128 token budget is not spent on rambling. PROMPT=preset keeps the
# presets' own (step-by-step) instruction and the OPSD paper's privileged template instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TD=${TD:-.venv/bin/trajdistill}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # on shared cores one thread is several times faster
COMMON=(--set optim.steps="$STEPS" --set optim.problems_per_step="$PROBLEMS" --set sampling.n="$N"
        --set sampling.max_new_tokens="$TOKENS" --set eval.max_new_tokens="$TOKENS"
        --set data.max_eval="$EVAL" --set "eval.k=$K" --set seed="${SEED:-0}")
if [ "${PROMPT:-demo}" = demo ]; then
  COMMON+=(--set 'prompt.instruction=Put your final answer within \boxed{}.'
           --set 'prompt.privileged="{problem}\n\nReference solution:\n{reference}\n\n{instruction}"')
fi
COMMON+=("$@")   # the script's own arguments: more --set overrides for every run

# run NAME PRESET [ARGS...]: train configs/PRESET into $OUT/NAME unless it finished already.
run() {
  local name=$1 preset=$2
  shift 2
  if [ -f "$OUT/$name/timing.json" ]; then echo "skip $name (done)"; return; fi
  echo "== $name ($preset)"
  nice -n 5 "$TD" train "configs/$preset" "${COMMON[@]}" -o "$OUT/$name" "$@"
}
