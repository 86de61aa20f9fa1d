"""The Snakefile's config: config.yaml unless `--configfile` replaces it; `--config` overrides either.

Dry runs of one generation job with its shell command printed: the sampling seed in the command
is the config value the job got.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_TARGET = "results/paper/generations/r1-7b/base/epoch-0/aime.jsonl"
DEMO_TARGET = "results/demo/generations/smollm2/base/epoch-0/strongreject.jsonl"


def dry_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", *args]  # also where the demo has run
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def generation_seeds(result: subprocess.CompletedProcess) -> set[int]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    settings = re.findall(r"generate\.py .*?--settings '(\{.*?\})'", result.stdout)
    assert settings, result.stdout[-3000:]
    return {json.loads(s)["sampling"]["seed"] for s in settings}


def test_config_yaml_is_the_default_and_a_config_override_changes_one_key():
    assert generation_seeds(dry_run(PAPER_TARGET)) == {42}  # config.yaml's seed
    assert generation_seeds(dry_run("--config", "seed=1", "--", PAPER_TARGET)) == {1}


def test_configfile_replaces_config_yaml_and_config_overrides_it():
    assert generation_seeds(dry_run("--configfile", "config/demo.yaml", "--", DEMO_TARGET)) == {42}
    assert generation_seeds(dry_run("--configfile", "config/demo.yaml", "--config", "seed=7", "--", DEMO_TARGET)) == {7}
    # replaced, not merged: config.yaml's models are not in the demo's config, so no rule makes them
    paper = dry_run("--configfile", "config/demo.yaml", "--", PAPER_TARGET)
    assert paper.returncode != 0
    assert "MissingRuleException" in paper.stdout + paper.stderr, paper.stdout[-2000:] + paper.stderr[-2000:]


def planned_paths(*args: str) -> set[str]:
    """Every output and log path of a whole-DAG dry run."""
    result = dry_run(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fields = re.findall(r"^\s+(?:output|log): (.+)$", result.stdout, re.M)
    return {path.strip() for field in fields for path in field.split(",")}


def test_the_demo_and_the_paper_grid_write_disjoint_results_folders():
    """Each config names its experiment and writes only below results/<experiment>/, so running
    one after the other in a checkout never reruns or overwrites the other's outputs."""
    paper, demo = planned_paths(), planned_paths("--configfile", "config/demo.yaml")
    assert len(paper) > 4000 and len(demo) > 100
    assert all(p.startswith("results/paper/") for p in paper), sorted(
        p for p in paper if not p.startswith("results/paper/")
    )[:5]
    assert all(p.startswith("results/demo/") for p in demo), sorted(
        p for p in demo if not p.startswith("results/demo/")
    )[:5]
    assert not paper & demo
    print(
        f"\npaper grid: {len(paper)} output and log paths under results/paper/; demo: {len(demo)} under results/demo/; shared: 0"
    )
