"""`--sdm conda` without conda: each env's pip section in a fresh virtualenv runs a real job of each of its rules.

Conda channels are not reachable here, so each envs/<name>.yaml is rebuilt as what conda would make of it
(its Python, its pip, its pip section; torch from the local CPU build) and a real job of every rule that
names the env is rerun with that interpreter first on PATH, without the project's .venv and without
PYTHONPATH: the package comes from the scripts' own `sys.path` line, everything else from the env.
The vLLM env needs CUDA and is excepted (its resolution is checked by .ci/check_gpu_env.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dag import REPO, snakemake, tiny_config, write_config
from pins import conda_env, rules_by_env

CPU_ENVS = ("train", "eval")
DEMO_MODEL = "smollm2"
PREPARED = f"results/tiny/models/{DEMO_MODEL}/base"  # tiny_config names its experiment "tiny"


def build_venv(name: str, root: Path) -> Path:
    """A virtualenv of envs/<name>.yaml's Python and pip with its pip section installed; returns its bin/."""
    env = conda_env(name)
    interpreter = shutil.which(f"python{env.python}")
    assert interpreter, f"envs/{name}.yaml needs python{env.python}, not found on PATH"
    venv = root / name
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"pip=={env.pip}"], check=True)
    requirements = venv / "requirements.txt"
    requirements.write_text("\n".join(env.requirements) + "\n", encoding="utf-8")
    subprocess.run([*pip, "-r", str(requirements)], check=True, timeout=1800)
    post_deploy = REPO / "envs" / f"{name}.post-deploy.sh"
    if post_deploy.exists():  # as Snakemake runs it: once, with the env first on PATH
        subprocess.run(
            ["bash", str(post_deploy)], check=True, env={**os.environ, "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
        )
    return venv / "bin"


@pytest.fixture(scope="module")
def venvs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("envs")
    return {name: build_venv(name, root) for name in CPU_ENVS}


@pytest.fixture(scope="module")
def finished_dag(tmp_path_factory, tiny_model) -> Path:
    """The tiny DAG run once with the project's .venv, so every rule's inputs exist."""
    workdir = tmp_path_factory.mktemp("envdag")
    config = tiny_config(tiny_model)
    # The tiny DAG has no prune and no prepare_model job: prune as in config.yaml, and the demo's GGUF
    # model declared (no run uses it; PREPARED is its prepare_model output).
    config["prune"] = {"trainer_state": True, "keep_epochs": "all"}
    config["models"][DEMO_MODEL] = yaml.safe_load((REPO / "config/demo.yaml").read_text())["models"][DEMO_MODEL]
    write_config(workdir, config)
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def one_output_per_rule(workdir: Path, rules: list[str]) -> dict[str, str]:
    """For each rule, the first output file Snakemake's summary lists for it (PREPARED for prepare_model)."""
    result = snakemake(workdir, "--summary")
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, str] = {"prepare_model": PREPARED} if "prepare_model" in rules else {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) > 2 and fields[2] in rules:
            found.setdefault(fields[2], fields[0])
    assert sorted(found) == sorted(rules), f"summary lists no output for {sorted(set(rules) - set(found))}"
    return found


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else -1


def executed_rules(log: str) -> list[str]:
    """Rules of the jobs Snakemake started, from its log lines `rule X:` / `localrule X:`."""
    return sorted(
        {
            line.split()[-1].rstrip(":")
            for line in log.splitlines()
            if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":")
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("env", CPU_ENVS)
def test_every_rule_of_the_env_runs_with_the_envs_interpreter(env, venvs, finished_dag, capsys):
    rules = rules_by_env()[env]
    targets = one_output_per_rule(finished_dag, rules)
    job_path = f"{venvs[env]}:/usr/bin:/bin"
    assert shutil.which("python", path=job_path) == str(venvs[env] / "python")
    before = {rule: mtime(finished_dag / target) for rule, target in targets.items()}
    # Only the targets run: no mtime trigger (a rerun train would make every evaluation downstream due),
    # and no rule of another env may run in this interpreter.
    result = snakemake(
        finished_dag,
        "--cores",
        "2",
        "--rerun-triggers",
        "params",
        "input",
        "software-env",
        "--allowed-rules",
        *rules,
        "--force",
        *targets.values(),
        job_path=job_path,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert executed_rules(result.stdout + result.stderr) == sorted(rules)
    rewritten = [rule for rule, target in targets.items() if mtime(finished_dag / target) > before[rule]]
    assert sorted(rewritten) == sorted(rules)
    with capsys.disabled():
        print(
            f"\nenvs/{env}.yaml ({venvs[env].parent}): real jobs of {len(rewritten)} rules ran: {', '.join(sorted(rewritten))}"
        )


def test_every_workflow_script_imports_the_package_the_same_way():
    """One import mechanism: each script puts the checkout's src/ first on sys.path (no installed copy needed)."""
    line = 'sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))'
    scripts = sorted((REPO / "workflow_scripts").glob("*.py"))
    assert scripts
    assert [s.name for s in scripts if s.read_text(encoding="utf-8").count(line) != 1] == []
