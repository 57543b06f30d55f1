# tradelab: `make help` lists the targets.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
STAMP := .make/installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast lint format tensorboard clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[dev]"
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)  ## install torch (CPU wheel) first, then the project and its dev tools

train: $(STAMP)  ## train on TSLA daily with the defaults, then report the test period vs buy-and-hold (ARGS="key=value ...")
	$(PYTHON) -m src.train $(ARGS)

test: $(STAMP)  ## run the whole test suite (unit, env checks, SB3 smoke, end-to-end CLI)
	$(PYTHON) -m pytest -q

test-fast: $(STAMP)  ## the suite without the slow end-to-end tests
	$(PYTHON) -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff lint and format check
	$(PYTHON) -m ruff check src tests
	$(PYTHON) -m ruff format --check src tests

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(PYTHON) -m ruff check --fix src tests
	$(PYTHON) -m ruff format src tests

tensorboard: $(STAMP)  ## serve the TensorBoard logs of every run under outputs/
	$(PYTHON) -m tensorboard.main --logdir outputs --bind_all

clean:  ## remove caches (run outputs under outputs/ are kept)
	rm -rf .make .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
