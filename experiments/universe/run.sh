#!/usr/bin/env bash
# The runs behind experiments/universe/results.md. Run from a git worktree (Hydra recomposes from disk), with
# nothing else on the cores; two processes at a time, one torch thread each. Outputs under outputs/universe/.
#   bash experiments/universe/run.sh [seeds] [steps]
set -euo pipefail
SEEDS=${1:-"0 1 2 3"}
STEPS=${2:-320}
OUT=outputs/universe
COMMON="trainer.max_steps=$STEPS trainer.enable_progress_bar=false threads=1"
# TSLA alone, on the universe's calendar: the same train/val/test dates as TSLA inside the 9-ticker universe
# (3262 training bars after the warm-up, validation 2023-08-04 .. 2025-01-31, test 2025-02-03 .. 2026-08-04).
TSLA_SPLIT="~env.split +env.split={train_bars:3262,val_bars:375,test_bars:377}"
jobs=()
for s in $SEEDS; do
  jobs+=("env=tsla $TSLA_SPLIT seed=$s hydra.run.dir=$OUT/tsla_s$s")
  jobs+=("env=universe seed=$s hydra.run.dir=$OUT/universe_s$s")
done
for s in $SEEDS; do
  jobs+=("env=portfolio seed=$s model.d_model=32 model.n_layers=1 model.d_ff=64 algo.num_envs=16 algo.rollout_steps=64 hydra.run.dir=$OUT/portfolio_s$s")
done
# the portfolio again at the default budget (1280 gradient steps), seeds 0 and 1: LONG=1 bash experiments/universe/run.sh
if [ "${LONG:-0}" = 1 ]; then
  jobs=()
  COMMON="trainer.max_steps=1280 trainer.enable_progress_bar=false threads=1"
  for s in 0 1; do
    jobs+=("env=portfolio seed=$s model.d_model=32 model.n_layers=1 model.d_ff=64 algo.num_envs=16 algo.rollout_steps=64 hydra.run.dir=$OUT/portfolio_long_s$s")
  done
fi
run() { [ -f "$2/report.md" ] && return 0; python -m src.train $1 $COMMON > "$2.log" 2>&1; }
mkdir -p $OUT
i=0
for j in "${jobs[@]}"; do
  dir=$(sed -E 's/.*hydra.run.dir=([^ ]+).*/\1/' <<<"$j")
  run "$j" "$dir" &
  i=$((i + 1))
  if (( i % 2 == 0 )); then wait; fi
done
wait
echo done
