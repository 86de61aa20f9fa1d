"""The three looks at the paper grid that README's "Before spending GPU hours" takes, each run as a
user runs it: the dry run's job table (and the GPU-hour estimate from the same listing), the rule
graph (docs/rulegraph.md must be what Snakemake draws now) and what is stale and why."""

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from safelora import config as grid

REPO = Path(__file__).resolve().parents[1]
RULEGRAPH_DOC = REPO / "docs/rulegraph.md"


def snakemake(*args: str, cwd: Path = REPO) -> str:
    """This interpreter's Snakemake on the checkout's Snakefile; its stdout."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def job_table(text: str) -> Counter:
    """The first "Job stats" table of a dry run: jobs per rule, with its `total`."""
    block = re.search(r"^job\s+count\n-+\s+-+\n(.*?^total\s+\d+)$", text, re.S | re.M)
    assert block, text[-3000:]
    return Counter({rule: int(count) for rule, count in (line.split() for line in block.group(1).splitlines())})


def mermaid_edges(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Rule names and (upstream, downstream) rule pairs of a `--rulegraph mermaid-js` drawing."""
    names = dict(re.findall(r"^\s*(id\d+)\[(\w+)\]$", text, re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(id\d+) --> (id\d+)$", text, re.M)}
    return set(names.values()), edges


def paper_config() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    grid.validate_schema(config)
    grid.complete_config(config, REPO)
    return config


@pytest.mark.slow
def test_the_dry_runs_job_table_counts_the_grids_jobs_as_the_readme_shows(tmp_path):
    listing = snakemake("-n", "--profile", "profiles/slurm")
    table = job_table(listing)
    config = paper_config()
    assert table["train"] == len(grid.training_runs(config))  # one job per (model, run) trained
    assert table["generate"] == len(grid.evaluations(config))  # one per (checkpoint, benchmark)
    assert table["total"] == sum(n for rule, n in table.items() if rule != "total")
    # README's excerpt of the table is the printed one, row for row
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    excerpt = re.search(r"^ *job +count\n *-+ +-+\n(.*?)^ *total +(\d+)$", readme, re.S | re.M)
    assert excerpt, "README.md: no job table excerpt"
    for line in excerpt.group(1).splitlines():
        if line.strip() != "...":
            rule, count = line.split()
            assert table[rule] == int(count), f"README.md says {rule} {count}; the dry run plans {table[rule]}"
    assert table["total"] == int(excerpt.group(2))
    # the GPU-hour estimate reads the same listing and prices every planned job
    saved = tmp_path / "dryrun.txt"
    saved.write_text(listing, encoding="utf-8")
    script = [sys.executable, "benchmarks/gpu_hours.py", "--dryrun-file", str(saved)]
    estimate = subprocess.run(script, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert estimate.returncode == 0, estimate.stderr[-3000:]
    assert re.search(rf"^\| \*\*total\*\* \| {table['total']} \|", estimate.stdout, re.M), estimate.stdout
    assert re.search(rf"^\| train \| {table['train']} \| 2-8 \|", estimate.stdout, re.M), estimate.stdout


def test_the_rule_graph_draws_generation_feeding_grading_and_docs_show_it_as_drawn():
    rules, edges = mermaid_edges(snakemake("--rulegraph", "mermaid-js"))
    judges = {rule for rule in rules if rule.startswith("judge_epochs_")}
    assert judges and {("generate", "grade_text"), ("generate", "execute_code")} <= edges
    assert {("generate", judge) for judge in judges} <= edges
    assert {("train", "generate"), ("score", "aggregate"), ("aggregate", "figure")} <= edges
    block = re.search(r"```mermaid\n(.*?)```", RULEGRAPH_DOC.read_text(encoding="utf-8"), re.S)
    assert block, f"{RULEGRAPH_DOC}: no mermaid block"
    assert mermaid_edges(block.group(1)) == (rules, edges), (
        f"{RULEGRAPH_DOC} differs from the paper grid's rule graph: redraw it with "
        "`.venv/bin/snakemake --rulegraph mermaid-js` (docs/rulegraph.md says how)"
    )


@pytest.mark.slow
def test_a_changed_setting_shows_as_stale_with_its_reason(tmp_path):
    """One real job of the paper grid (a recipe file, written in seconds), then `versions.train`
    bumped: --summary's status and the dry run's reason name that file and why."""
    (tmp_path / "data").symlink_to(REPO / "data")
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    recipe = "results/paper/train/r1-7b/full/recipe.yaml"
    common = ["--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "1"]
    snakemake(*common, recipe)
    row = rf"^{re.escape(recipe)}\t.*\t{{status}}\t{{plan}}$"

    summary = snakemake(*common, "--summary", recipe)
    assert re.search(row.format(status="ok", plan="no update"), summary, re.M), summary
    # README: Snakemake 9.27.1's --list-changes params lists every file made with params, changed or not
    assert snakemake(*common, "--list-changes", "params").split() == [recipe]

    config = yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8"))
    config["versions"]["train"] += 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    summary = snakemake(*common, "--summary", recipe)
    assert re.search(row.format(status="params changed", plan="update pending"), summary, re.M), summary
    reason = re.search(r"^\s+reason: (.*)$", snakemake(*common, "-n", recipe), re.M)
    assert reason and reason.group(1).startswith("Params have changed since last execution"), reason
    assert '"version":1' in reason.group(1) and '"version":2' in reason.group(1)  # before and now
