# tradelab: `make help` lists the targets.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
STAMP := .make/installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: bench suite compare-augment help install train test test-fast lint format tensorboard clean compare-optimizers compare-exploration

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[dev]"
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)  ## install torch (CPU wheel) first, then the project and its dev tools

train: $(STAMP)  ## train on TSLA daily with the defaults, then report the test period vs buy-and-hold (ARGS="key=value ...")
	$(PYTHON) -m src.train $(ARGS)

PYTEST_WORKERS ?= 2
test: $(STAMP)  ## run the whole test suite (unit, env checks, SB3 smoke, end-to-end CLI) on PYTEST_WORKERS processes
	$(PYTHON) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=15

test-fast: $(STAMP)  ## the suite without the slow end-to-end tests
	$(PYTHON) -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff lint and format check
	$(PYTHON) -m ruff check src tests experiments hydra_plugins .ci
	$(PYTHON) -m ruff format --check src tests experiments hydra_plugins .ci

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(PYTHON) -m ruff check --fix src tests experiments hydra_plugins .ci
	$(PYTHON) -m ruff format src tests experiments hydra_plugins .ci

tensorboard: $(STAMP)  ## serve the TensorBoard logs of every run under outputs/
	$(PYTHON) -m tensorboard.main --logdir outputs --bind_all

BENCH_ARGS ?=
bench: $(STAMP)  ## env, PPO end to end, Stable-Baselines3 side by side, memory and scaling (~4-7 min on 2 cores); writes experiments/benchmarks/results.md
	$(PYTHON) experiments/benchmarks/bench.py $(BENCH_ARGS)
	$(PYTHON) experiments/benchmarks/population.py
	$(PYTHON) experiments/benchmarks/portfolio_env.py

clean:  ## remove caches (run outputs under outputs/ are kept)
	rm -rf .make .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

COMPARE_STEPS ?= 640
COMPARE_THREADS ?= 1
COMPARE_NOW := $(shell date +%Y-%m-%d_%H-%M-%S)
COMPARE_DIR ?= outputs/multirun/optimizer_comparison_$(COMPARE_NOW)
suite: $(STAMP)  ## the default configuration on the six planted-signal markets, population=8 each (~20-30 min on 2 cores); writes experiments/suite/results.md
	$(PYTHON) -m src.suite --report experiments/suite/results.md $(ARGS)

compare-optimizers: $(STAMP)  ## every optimizer x 3 seeds on tsla and synthetic (one sweep per env, side by side), same budget; writes experiments/optimizer_comparison/results.md
	@mkdir -p $(COMPARE_DIR)
	@set -e; pids=""; for env in tsla synthetic; do \
		echo "sweep env=$$env -> $(COMPARE_DIR)/$$env (log: $(COMPARE_DIR)/$$env.log)"; \
		$(PYTHON) -m src.train -m optimizer=sgd,adamw,muon,shampoo,soap seed=0,1,2 env=$$env \
			threads=$(COMPARE_THREADS) trainer.max_steps=$(COMPARE_STEPS) trainer.enable_progress_bar=false \
			hydra.sweep.dir=$(COMPARE_DIR)/$$env > $(COMPARE_DIR)/$$env.log 2>&1 & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p; done
	$(PYTHON) experiments/compare.py $(COMPARE_DIR) --out experiments/optimizer_comparison --label optimizer \
		--command "make compare-optimizers COMPARE_STEPS=$(COMPARE_STEPS) COMPARE_THREADS=$(COMPARE_THREADS)"

EXPLORE_DIR ?= outputs/multirun/exploration_replay_$(COMPARE_NOW)
EXPLORE_VARIANTS ?= curiosity=none curiosity=rnd replay=uniform replay=prioritized replay=her algo=grpo
compare-exploration: $(STAMP)  ## PPO vs curiosity, each replay and GRPO, 3 seeds on tsla and planted, same env-step budget; writes experiments/exploration_replay/results.md
	bash experiments/run_variants.sh $(PYTHON) $(EXPLORE_DIR) $(COMPARE_STEPS) $(COMPARE_THREADS) $(EXPLORE_VARIANTS)
	$(PYTHON) experiments/compare.py $(EXPLORE_DIR) --out experiments/exploration_replay --label variant --baseline ppo \
		--title "Exploration, replay and GRPO against plain PPO" \
		--command "make compare-exploration COMPARE_STEPS=$(COMPARE_STEPS) COMPARE_THREADS=$(COMPARE_THREADS)"

AUGMENT_DIR ?= outputs/multirun/augment_ensemble_curriculum_$(COMPARE_NOW)
AUGMENT_VARIANTS ?= augmentation=none augmentation=jitter augmentation=magnitude_warp augmentation=time_warp \
	augmentation=window_slice augmentation=mixup augmentation=cutmix augmentation=all ensemble=three ensemble=five \
	curriculum=linear curriculum=adaptive
compare-augment: $(STAMP)  ## baseline vs each augmentation, ensembles of 3 and 5, each curriculum; 3 seeds on tsla and planted; writes experiments/augment_ensemble_curriculum/results.md
	bash experiments/run_variants.sh $(PYTHON) $(AUGMENT_DIR) $(COMPARE_STEPS) $(COMPARE_THREADS) $(AUGMENT_VARIANTS)
	$(PYTHON) experiments/compare.py $(AUGMENT_DIR) --out experiments/augment_ensemble_curriculum --label variant --baseline ppo \
		--title "Augmentation, ensembles and curricula against plain PPO" \
		--command "make compare-augment COMPARE_STEPS=$(COMPARE_STEPS) COMPARE_THREADS=$(COMPARE_THREADS)"
