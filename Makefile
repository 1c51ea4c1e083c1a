# ser_lightning developer commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RAVDESS ?= ../shared/corpora/ravdess
ENCODER ?= ../shared/models/whisper-base-encoder

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-all demo clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

install: ## create .venv with the tested, pinned stack (requirements.lock) and the `ser` command
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@$(BIN)/ser --help >/dev/null && echo "installed: $(BIN)/ser"

test: ## the default test suite (fast; what CI runs)
	WANDB_MODE=offline $(BIN)/python -m pytest -q

test-slow: ## only the slow tests (real-weight training, fault injection)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m slow

test-all: ## every test
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m "slow or not slow"

demo: ## one fold on RAVDESS with whisper-base on the CPU (README quickstart)
	OMP_NUM_THREADS=1 $(BIN)/ser train data=ravdess data.root=$(RAVDESS) data.fold=1 model.encoder=$(ENCODER) \
		model.layer=5 model.input_seconds=clip model.pooling=qkv output_dir=runs/quickstart

clean: ## remove run folders and caches (not the venv)
	rm -rf runs .ser_cache .pytest_cache
