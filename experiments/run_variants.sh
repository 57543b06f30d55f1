#!/usr/bin/env bash
# Train every variant x seeds 0,1,2 on each env of $COMPARE_ENVS (default: tsla planted; one env per background
# job, side by side), same step budget, into <dir>/<env>/<variant>; used by `make compare-exploration` and
# `make compare-augment`.
# Usage: experiments/run_variants.sh <python> <dir> <steps> <threads> <variant>...
set -euo pipefail
py=$1 dir=$2 steps=$3 threads=$4
shift 4
mkdir -p "$dir"
pids=()
for env in ${COMPARE_ENVS:-tsla planted}; do
	(
		for v in "$@"; do
			d=$(echo "$v" | tr = -)  # Hydra refuses '=' in a path override
			echo "sweep env=$env $v -> $dir/$env/$d"
			"$py" -m src.train -m "$v" seed=0,1,2 "env=$env" "threads=$threads" "trainer.max_steps=$steps" \
				trainer.enable_progress_bar=false "hydra.sweep.dir=$dir/$env/$d" >>"$dir/$env.log" 2>&1
		done
	) &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
